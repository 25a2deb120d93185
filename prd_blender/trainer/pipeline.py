"""``prd train``: capture -> stage 1 -> outputs in the hand-off folder."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .capture import load_capture
from .evaluate import evaluate_distilled, evaluate_views
from .outputs import OutputFolderError, cameras_record, prepare_output, read_manifest, update_manifest, write_json
from .raster import choose_backend
from .results import write_environment, write_view_maps
from .shading.brdf_lut import get_brdf_lut
from .train.distill import DistillConfig, load_distill_state, train_distill
from .train.gaussians import Gaussians
from .train.progress import Progress
from .train.stage1 import Stage1Config, camera_extent, train_stage1

if TYPE_CHECKING:
    from .shading.envmap import EnvironmentLight
    from .shading.visibility import VisibilityGrid


def run_train(
    capture: str | Path,
    out: Path,
    *,
    device: str = "auto",
    iterations: int | None = None,
    resolution: int | None = None,
    downscale: float | None = None,
    background: tuple[float, float, float] | None = None,
    hold_out_every: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    max_seconds: float | None = None,
    stop_at: int | None = None,
    config: Stage1Config | None = None,
    distill: DistillConfig | None = None,
    quiet: bool = False,
) -> dict:
    """Train on a capture into ``out``; returns the final manifest. Raises on bad input.

    Stage 1 always; stages 2-4 when ``distill`` is given. ``stop_at`` counts iterations across all
    stages (stage 1's, then the distillation's).
    """
    out = Path(out)
    prepare_output(out, resume, overwrite)
    if resume:
        # A resumed run uses the settings it was started with, so results match an uninterrupted run.
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        capture, resolution, downscale = run["capture"], run["resolution"], run["downscale"]
        background = tuple(run["background"]) if run["background"] else None
        hold_out_every = run["hold_out_every"]
        config = Stage1Config.from_dict(run["config"])
        distill = DistillConfig.from_run(run["distill"]) if run.get("distill") else None
        if iterations is not None:
            config.iterations = iterations
    progress = Progress(out / "progress.jsonl", quiet=quiet)
    try:
        backend, why = choose_backend(device)
        progress.emit("backend", backend=backend, why=why)
        cap = load_capture(capture, resolution=resolution, downscale=downscale, background=background)
        train_views, test_views = cap.split(hold_out_every)
        progress.emit(
            "capture", source=cap.source, views=len(cap.views), train=len(train_views), test=len(test_views),
            width=cap.views[0].width, height=cap.views[0].height, background=list(cap.background),
        )
        cfg = config or Stage1Config()
        if iterations is not None:
            cfg.iterations = iterations
        if not resume:
            _write_run_record(out, capture, resolution, downscale, background, hold_out_every, cfg, distill,
                              train_views, test_views)
            update_manifest(
                out, status="running", stage=1, backend=backend, capture=str(Path(capture).resolve()),
                background=list(cap.background),
                files={
                    "run": "run.json", "log": "progress.jsonl", "cameras": "cameras.json",
                    "checkpoint": "checkpoint.pt",
                },
            )
        points = (cap.points, cap.point_colors) if cap.points is not None else None
        distill_state = load_distill_state(out / "checkpoint.pt") if resume else None
        if distill_state is None:
            model, info = train_stage1(
                train_views, cfg, out, progress, backend, cap.background, points=points, resume=resume,
                max_seconds=max_seconds, stop_at=stop_at,
                job_iterations=cfg.iterations + (distill.total if distill and not max_seconds else 0),
            )
            finished, stage, iters, seconds = info["finished"], 1, info["iteration"], info["seconds"]
            sh_degree = info["sh_degree"]
        else:
            model, finished = Gaussians(distill_state["params"]), True
            iters, seconds, sh_degree = cfg.iterations, 0.0, cfg.sh_degree
        files = {"gaussians": "point_cloud.ply"}
        if finished and distill is not None and not max_seconds:
            d_stop = stop_at - cfg.iterations if stop_at is not None else None
            model, light, vis, dinfo = train_distill(
                train_views, model, distill, out, progress, backend, cap.background, camera_extent(train_views),
                resume_state=distill_state, stop_at=d_stop, seed=cfg.seed, offset=cfg.iterations,
            )
            finished, stage = dinfo["finished"], distill.stage_of(max(dinfo["iteration"], 1))
            iters, seconds = cfg.iterations + dinfo["iteration"], seconds + dinfo["seconds"]
            if finished:
                files.update(_write_distilled(out, model, light, vis, train_views, test_views, distill, backend,
                                              cap.background))
        model.save_ply(out / "point_cloud.ply")
        result = {"iterations": iters, "seconds": round(seconds, 1), "gaussians": len(model)}
        if test_views and finished:
            if stage == 1:
                ev = evaluate_views(model, test_views, sh_degree, backend, cap.background)
            else:
                ev = evaluate_distilled(model, light, vis, test_views, distill, backend, cap.background)
            write_json(out / "eval.json", {**ev, **result, "backend": backend})
            files["eval"] = "eval.json"
            result.update(psnr=round(ev["psnr"], 3), ssim=round(ev["ssim"], 4))
        status = "complete" if finished or max_seconds else "paused"
        manifest = update_manifest(out, status=status, stage=stage, result=result, files=files)
        progress.emit("done", stage=stage, **result)
        return manifest
    except BaseException as exc:
        status = "cancelled" if type(exc).__name__ == "Cancelled" else "failed"
        progress.emit("error" if status == "failed" else "cancelled", kind=type(exc).__name__, message=str(exc))
        if (out / "manifest.json").is_file():
            try:
                update_manifest(out, status=status, error=str(exc))
            except OSError:
                pass  # a full disk must not hide the original error
        raise
    finally:
        progress.close()


def _write_run_record(out: Path, capture, resolution, downscale, background, hold_out_every: int,
                      cfg: Stage1Config, distill: DistillConfig | None, train_views, test_views) -> None:
    """run.json (the settings a resume and the readers of the run need) and cameras.json."""
    write_json(out / "run.json", {
        "capture": str(Path(capture).resolve()), "resolution": resolution, "downscale": downscale,
        "background": list(background) if background else None, "hold_out_every": hold_out_every,
        "config": asdict(cfg), "distill": asdict(distill) if distill else None,
        "prd_version": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
    })
    write_json(out / "cameras.json", {
        "cameras": cameras_record(train_views, "train") + cameras_record(test_views, "test")
    })


def _write_distilled(out: Path, model: Gaussians, light, vis, train_views, test_views, distill: DistillConfig,
                     backend: str, background) -> dict[str, str]:
    """The light, the visibility and the per-view maps (of the test views, else every 8th training view) of a
    distilled model; returns their manifest entries."""
    write_environment(light, out / "environment.exr")
    files = {"environment": "environment.exr", "maps": "maps.json"}
    if vis is not None:  # None only when stages 3-4 were set to no iterations
        vis.save(out / "visibility.npz")
        files["visibility"] = "visibility.npz"
    records = write_view_maps(model, light, get_brdf_lut(), vis, test_views or train_views[::8], distill, backend,
                              background, out / "maps")
    write_json(out / "maps.json", {"views": records})
    return files


def save_distilled_run(out: Path, *, capture: str | Path, train_views, test_views, background,
                       config: Stage1Config, distill: DistillConfig, model: Gaussians, light, vis,
                       seconds: float, backend: str = "cpu") -> dict:
    """A complete run folder for a model distilled outside ``run_train`` (the benchmarks' kept models), in
    the same format, so ``prd relight``, ``prd mesh``, ``prd bench mesh`` and Blender's import read it.

    ``out`` must be new or empty (nothing is overwritten); returns the manifest.
    """
    out = Path(out)
    prepare_output(out, resume=False, overwrite=False)  # refuses a folder that is not empty
    _write_run_record(out, capture, None, None, background, 0, config, distill, train_views, test_views)
    files = {"run": "run.json", "cameras": "cameras.json", "gaussians": "point_cloud.ply"}
    files.update(_write_distilled(out, model, light, vis, train_views, test_views, distill, backend, background))
    model.save_ply(out / "point_cloud.ply")
    result = {"iterations": config.iterations + distill.total, "seconds": round(seconds, 1), "gaussians": len(model)}
    return update_manifest(out, status="complete", stage=4, backend=backend, capture=str(Path(capture).resolve()),
                           background=list(background), result=result, files=files)


def load_distilled(out: Path) -> tuple[DistillConfig, Gaussians, EnvironmentLight, VisibilityGrid | None]:
    """A run folder's distilled state as ``prd relight``, ``prd eval`` and the benchmarks read it: the config it
    was trained with, the Gaussians, the light (from environment.exr) and the visibility grid (None if the run
    has none). Refuses a folder that holds no distilled materials."""
    from .shading.envmap import EnvironmentLight
    from .shading.hdr_io import read_exr
    from .shading.visibility import VisibilityGrid

    files = read_manifest(out).get("files", {})
    if "environment" not in files:
        raise OutputFolderError(f"{out} holds no distilled materials yet (train all four stages first)")
    cfg = DistillConfig.from_run(json.loads((out / "run.json").read_text(encoding="utf-8"))["distill"])
    model = Gaussians.load_ply(out / files["gaussians"])
    light = EnvironmentLight(cfg.light_resolution, init=read_exr(out / files["environment"]))
    vis = VisibilityGrid.load(out / files["visibility"]) if "visibility" in files else None
    return cfg, model, light, vis


def run_eval(out: Path, device: str = "auto") -> dict:
    """Re-evaluate a finished run's held-out views from its PLY."""
    manifest = read_manifest(out)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    if not run["hold_out_every"]:
        raise ValueError(f"the run in {out} held out no views (train with --hold-out N)")
    backend, _ = choose_backend(device)
    cap = load_capture(run["capture"], resolution=run["resolution"], downscale=run["downscale"],
                       background=tuple(run["background"]) if run["background"] else None)
    _, test_views = cap.split(run["hold_out_every"])
    files = manifest["files"]
    if "environment" in files:  # the PLY is read once, with the rest of the distilled state
        cfg, model, light, vis = load_distilled(out)
    else:
        model = Gaussians.load_ply(out / files["gaussians"])
    if model.has_pbr and "environment" in files:
        ev = evaluate_distilled(model, light, vis, test_views, cfg, backend, cap.background)
    else:
        ev = evaluate_views(model, test_views, run["config"]["sh_degree"], backend, cap.background)
    write_json(out / "eval.json", {**ev, "backend": backend})
    return ev
