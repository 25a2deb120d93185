"""Stage 1 of PRD: a plain 3DGS radiance field (I_raw) with densification and an SH degree schedule."""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..capture import View
from .background import random_background
from .checkpoint import load_checkpoint, save_checkpoint
from .densify import DensifyStrategy
from .gaussians import Gaussians
from .losses import depth_distortion, image_loss, psnr
from .progress import Progress
from .render import Camera, depth_spread_channel, normal_consistency, render_radiance, splatted_normals


@dataclass
class Stage1Config:
    iterations: int = 7_000
    sh_degree: int = 3
    sh_every: int = 1_000  # raise the SH degree by one every this many iterations
    lr_means: float = 1.6e-4  # times the scene extent, decays exponentially to lr_means_final
    lr_means_final: float = 1.6e-6
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_opacities: float = 0.05
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    ssim_weight: float = 0.2
    init_random: int = 20_000  # Gaussians when the capture has no sparse points
    seed: int = 0
    checkpoint_every: int = 500
    checkpoint_seconds: float = 120.0  # also checkpoint at least this often
    log_every: int = 10
    # Depth-normal consistency in stage 1 (train.render.normal_consistency), from this fraction of the
    # iterations on. Off: measured at 0.1, it halves stage 1's normal error (glossy 31 -> 15 deg) but the
    # distilled result is worse (glossy relighting -1.7 dB, albedo -7 dB, normals 8.2 -> 12.7 deg; mixed
    # -1.8 dB; docs/benchmarks.md, relighting run 9). Kept for experiments (`bench relight --set-stage1`).
    normal_weight: float = 0.0
    normal_start: float = 0.3
    # Depth distortion (train.losses.depth_distortion) from normal_start on; 0: off. Stage 1 is where the mixed
    # object's crevice fills with a faint false floor (relighting run 32). At 100 (run 33, mixed, 3 x 1000 after it)
    # the distortion falls 14x and the bowl's inside normals go 20.9 -> 19.3 deg (all 9.1 -> 8.8), but albedo -0.73 dB
    # and roughness MAE 0.164 -> 0.183: a trade, so off (`bench relight --set-stage1 distortion_weight=100`).
    distortion_weight: float = 0.0
    # Composite each view over a random colour drawn per iteration instead of the capture's background (views with
    # alpha only; train.background), as DistillConfig.random_background does in stages 2-4. On its own (relighting run
    # 36, 3 x 1000, stages 2-4 over white) it is within a seed's spread: means relighting 27.17 -> 27.20 dB, albedo
    # 25.28 -> 25.38 dB, normals 6.15 -> 6.17 deg. The diffuse object's white silhouette band (run 35) stays (albedo
    # there 22.88 -> 22.87 dB): stages 2-4 make it, and their own switch removes it (26.38 dB, run 35). Off.
    random_background: bool = False
    densify: DensifyStrategy = field(default_factory=DensifyStrategy)

    @classmethod
    def from_dict(cls, d: dict) -> Stage1Config:
        d = dict(d)
        dens = DensifyStrategy(**d.pop("densify", {}))
        return cls(densify=dens, **d)


class Cancelled(Exception):
    """The run was asked to stop (SIGTERM/SIGINT); a checkpoint has been written."""


def estimate_object_sphere(views: list[View]) -> tuple[np.ndarray, float]:
    """Where the cameras look and how big a thing fits in all their views.

    Centre: least-squares closest point to all optical axes. Radius: the largest sphere around it
    that the median camera sees whole.
    """
    a = np.zeros((3, 3))
    b = np.zeros(3)
    dists, fovs = [], []
    for v in views:
        c2w = v.cam_to_world
        o, d = c2w[:3, 3], c2w[:3, 2]  # OpenCV: +z looks forward
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ o
        fovs.append(min(v.width / v.K[0, 0], v.height / v.K[1, 1]) / 2)
    centre = np.linalg.lstsq(a, b, rcond=None)[0]
    for v in views:
        dists.append(np.linalg.norm(v.center - centre))
    radius = float(np.median(dists) * np.sin(np.arctan(np.median(fovs))))
    return centre, radius


def camera_extent(views: list[View]) -> float:
    """3DGS's scene extent: 1.1 x the radius of the camera centres around their mean."""
    c = np.stack([v.center for v in views])
    return float(np.linalg.norm(c - c.mean(0), axis=1).max() * 1.1)


def make_optimizers(model: Gaussians, cfg: Stage1Config, extent: float) -> dict[str, torch.optim.Adam]:
    lrs = {
        "means": cfg.lr_means * extent, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
        "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN,
    }
    # One Adam per parameter so densification can resize each one's moments independently.
    return {k: torch.optim.Adam([model.params[k]], lr=lr, eps=1e-15) for k, lr in lrs.items()}


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the training loops check, so they can checkpoint and exit."""

    def __init__(self):
        self._signalled = False
        self._old = {}
        # A file whose appearance also stops the run: the Blender side's cancel on Windows, where a console
        # signal cannot reach a process started without a console window (CREATE_NO_WINDOW).
        self._stop_file = os.environ.get("PRD_STOP_FILE") or None

    @property
    def stop(self) -> bool:
        return self._signalled or bool(self._stop_file and os.path.exists(self._stop_file))

    def __enter__(self):
        # SIGBREAK (Windows only): what the Blender side's cancel sends there (CTRL_BREAK_EVENT to the group).
        sigs = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGBREAK,) if hasattr(signal, "SIGBREAK") else ())
        for sig in sigs:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self._signalled = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def train_stage1(
    train_views: list[View],
    cfg: Stage1Config,
    out_dir: Path,
    progress: Progress,
    backend: str,
    background: tuple[float, float, float],
    points: tuple[np.ndarray, np.ndarray] | None = None,
    resume: bool = False,
    max_seconds: float | None = None,
    stop_at: int | None = None,
    job_iterations: int | None = None,
) -> tuple[Gaussians, dict]:
    """Train (or resume) stage 1; returns the model and a summary (iteration, seconds, sh_degree).

    Writes ``checkpoint.pt`` into ``out_dir``. ``job_iterations``: the whole job's iteration count (all
    stages), so that progress events show one bar and one time-left estimate for the job.
    """
    ckpt_path = out_dir / "checkpoint.pt"
    cams = [Camera.from_view(v) for v in train_views]
    bg = torch.tensor(background, dtype=torch.float32)
    extent = camera_extent(train_views)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if resume:
        state = load_checkpoint(ckpt_path)
        if state.get("stage") != 1:
            raise ValueError(f"{ckpt_path} is a stage {state.get('stage')} checkpoint, not stage 1")
        model = Gaussians(state["params"])
        opt = make_optimizers(model, cfg, extent)
        for k, o in opt.items():
            o.load_state_dict(state["optim"][k])
        dens_state = state["densify"]
        it0, order, cursor = state["iteration"], state["order"], state["cursor"]
        elapsed0 = state.get("elapsed", 0.0)
    else:
        if points is not None and len(points[0]) >= 100:
            model = Gaussians.from_points(points[0], points[1])
            init = f"{len(points[0])} sparse points"
        else:
            centre, radius = estimate_object_sphere(train_views)
            model = Gaussians.random_in_sphere(centre, radius, cfg.init_random, seed=cfg.seed)
            where = np.round(centre, 3).tolist()
            init = f"{cfg.init_random} random Gaussians in a sphere of radius {radius:.3g} at {where}"
        progress.emit("init", stage=1, gaussians=len(model), how=init)
        opt = make_optimizers(model, cfg, extent)
        dens_state = cfg.densify.init_state(len(model))
        it0, order, cursor, elapsed0 = 0, [], 0, 0.0

    def checkpoint(it: int, elapsed: float) -> None:
        save_checkpoint(ckpt_path, {
            "stage": 1, "iteration": it, "params": model.state_dict(),
            "optim": {k: o.state_dict() for k, o in opt.items()}, "densify": dens_state,
            "order": list(order), "cursor": cursor, "config": asdict(cfg), "elapsed": elapsed,
        })
        progress.emit("checkpoint", stage=1, iteration=it, path=str(ckpt_path))

    gamma = (cfg.lr_means_final / cfg.lr_means) ** (1 / max(cfg.iterations, 1))
    t_start = time.time()
    last_ckpt = t_start
    it = it0
    degree = min(cfg.sh_degree, max(it0 - 1, 0) // cfg.sh_every)
    loss_ema = psnr_ema = None
    with StopFlag() as flag:
        for it in range(it0 + 1, cfg.iterations + 1):
            opt["means"].param_groups[0]["lr"] = cfg.lr_means * extent * gamma**it
            degree = min(cfg.sh_degree, (it - 1) // cfg.sh_every)
            if cursor >= len(order):
                order = torch.randperm(len(cams)).tolist()
                cursor = 0
            cam = cams[order[cursor]]
            cursor += 1
            view_bg = bg
            if cfg.random_background:
                cam, view_bg = random_background(cam, bg, cfg.seed, it)
            with_normals = cfg.normal_weight > 0 and it > cfg.normal_start * cfg.iterations
            with_spread = cfg.distortion_weight > 0 and it > cfg.normal_start * cfg.iterations
            spread, ref = depth_spread_channel(model, cam) if with_spread else (None, 0.0)
            img, out = render_radiance(model, cam, degree, backend, view_bg, normals=with_normals, extra=spread)
            out.means2d.retain_grad()
            loss = image_loss(img, cam.image, cfg.ssim_weight)
            if with_normals:
                term = normal_consistency(splatted_normals(out), out.alpha[..., None], out.depth[..., None], cam)
                if term is not None:
                    loss = loss + cfg.normal_weight * term
            if with_spread:
                loss = loss + cfg.distortion_weight * depth_distortion(
                    out.features[..., -1:], out.alpha[..., None], out.depth[..., None], ref)
            loss.backward()
            with torch.no_grad():
                cfg.densify.accumulate(dens_state, out.means2d, out.radii, cam.width, cam.height)
                for o in opt.values():
                    o.step()
                    o.zero_grad(set_to_none=True)
                changed = cfg.densify.step(it, cfg.iterations, model, opt, dens_state, extent)
            if changed:
                progress.emit("densify", stage=1, iteration=it, gaussians=len(model), **changed)
            lv, pv = loss.item(), psnr(img.detach(), cam.image)
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            psnr_ema = pv if psnr_ema is None else 0.9 * psnr_ema + 0.1 * pv
            now = time.time()
            if it % cfg.log_every == 0 or it == cfg.iterations:
                per_it = (now - t_start) / (it - it0)
                total = job_iterations or cfg.iterations
                progress.emit(
                    "progress", stage=1, iteration=it, iterations=total, loss=round(loss_ema, 5),
                    psnr=round(psnr_ema, 3), gaussians=len(model), sh_degree=degree,
                    elapsed_s=round(elapsed0 + now - t_start, 1),
                    eta_s=round(per_it * (total - it), 1),
                )
            timed_out = (max_seconds is not None and elapsed0 + now - t_start >= max_seconds) or it == stop_at
            if it % cfg.checkpoint_every == 0 or now - last_ckpt >= cfg.checkpoint_seconds or flag.stop or timed_out:
                checkpoint(it, elapsed0 + now - t_start)
                last_ckpt = now
            if flag.stop:
                raise Cancelled(f"stopped at iteration {it}; resume with --resume")
            if timed_out:
                progress.emit("paused" if it == stop_at else "time_limit", stage=1, iteration=it)
                break
            if not math.isfinite(lv):
                raise FloatingPointError(f"loss became {lv} at iteration {it}")
    if it % cfg.checkpoint_every != 0 or it == it0:
        checkpoint(it, elapsed0 + time.time() - t_start)
    finished = it >= cfg.iterations
    seconds = elapsed0 + time.time() - t_start
    return model, {"iteration": it, "seconds": seconds, "sh_degree": degree, "finished": finished}
