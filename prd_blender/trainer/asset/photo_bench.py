"""``prd bench asset``: the baked asset rendered in Cycles against a capture's held-out photos.

``prd bench mesh`` scores the asset on synthetic objects with Cycles ground truth. This benchmark asks the
question a user of a real capture asks: does the asset, under the light the run recovered, look like the
photos the trainer never saw? For a finished run trained with ``--hold-out N`` and baked with ``prd mesh``:

- ``mesh.glb`` goes through Blender's glTF importer and Cycles (``render_cycles``, a subprocess) at every
  held-out camera, lit by the run's own ``environment.exr``;
- the Gaussians are rendered at the same cameras with the same light: the final PRD blend (what novel views
  show) and I_phy (the physical image, which is what the asset can reproduce at best);
- each is scored against the photo, tone-mapped the way the run was trained (``DistillConfig.tonemap``):
  PSNR over the whole image (composited over the capture's background), PSNR over the object (the photo's
  alpha > 0.5) without and with a per-channel scale fit (sRGB runs only, as ``bench relight`` fits), and the
  silhouette IoU against the photo's alpha.

The photos need alpha (an object mask); a capture without one has no object pixels to score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..bench.relight_data import psnr
from ..bench.relight_score import relight_psnr
from ..outputs import OutputFolderError, read_manifest
from .render_cycles import cycles_transforms, render_glb


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def score_view(linear: np.ndarray, alpha: np.ndarray, photo: np.ndarray, mask: np.ndarray,
               background: np.ndarray, tonemap: str) -> dict:
    """Scores of one render against one photo.

    ``linear``: the render's straight (not premultiplied) linear RGB (H, W, 3); ``alpha``: its coverage (H, W);
    ``photo``: the photo in display space over ``background``; ``mask``: the photo's alpha."""
    from ..train.distill import tonemap as apply_tonemap  # the curve the run was trained through

    disp = apply_tonemap(torch.from_numpy(np.clip(linear, 0, None).astype(np.float32)), tonemap).numpy()
    a = np.clip(alpha, 0, 1)[..., None]
    whole = disp * a + (1 - a) * np.asarray(background, np.float32)
    obj = mask > 0.5
    if not obj.any():
        raise ValueError("a held-out photo has no object pixels (alpha > 0.5)")
    drawn = alpha > 0.5
    res = {
        "image_psnr": psnr(whole, photo),
        "object_psnr": psnr(whole, photo, obj),
        "iou": _iou(obj, drawn),
    }
    if tonemap == "srgb":  # the fit undoes exposure and white balance in linear, then scores in display space
        from ..shading.shade import srgb_to_linear

        def lin(x: np.ndarray) -> np.ndarray:
            return srgb_to_linear(torch.from_numpy(np.asarray(x, np.float32))).numpy()

        # composited, as the photo is: edge pixels inside the mask are part background in both
        res["object_psnr_fit"] = relight_psnr(lin(whole), lin(photo), photo, obj, "display")
    return res


@torch.no_grad()
def _gaussian_renders(run: Path, views: list, backend: str) -> dict[str, list[tuple]]:
    """Per held-out view, the Gaussians' (linear RGB, coverage) of I_phy and of the final blend (the blend is
    already in display space: it is returned inverse-tone-mapped so that it scores like the rest)."""
    from ..pipeline import load_distilled
    from ..shading.brdf_lut import get_brdf_lut
    from ..train.distill import bounce_source, inverse_tonemap, shade_maps, trained_environment
    from ..train.render import Camera, render_pbr_maps

    cfg, model, light, vis = load_distilled(run)
    lut = get_brdf_lut()
    sky, sun = trained_environment(light, cfg)
    source = bounce_source(model, cfg)
    out: dict[str, list[tuple]] = {"phy": [], "blend": []}
    for v in views:
        maps = render_pbr_maps(model, Camera.from_view(v), cfg.sh_degree, backend)
        sh = shade_maps(maps, sky, lut, vis, 4, cfg, sun, source)
        cov = maps["coverage"][..., 0].numpy()
        out["phy"].append((sh["phy"].numpy(), cov))
        out["blend"].append((inverse_tonemap(sh["blend"].clamp(0, 1), cfg.tonemap).numpy(), cov))
    return out


def bench_asset(run: Path, samples: int = 32, device: str = "auto", json_path: Path | None = None) -> dict:
    """Score ``run``'s baked asset (Cycles) and its Gaussians against the run's held-out photos; renders stay in
    ``run/bench_asset/``. Returns the record (means and per-view figures)."""
    import time

    from ..bench.common import record, table
    from ..capture import load_capture
    from ..raster import choose_backend
    from ..train.distill import DistillConfig
    from .bench import read_render

    run = Path(run)
    manifest = read_manifest(run)
    files = manifest.get("files", {})
    if manifest.get("status") != "complete" or "environment" not in files:
        raise OutputFolderError(f"{run} is not a finished four-stage run (prd train without --stages 1)")
    if "glb" not in files:
        raise OutputFolderError(f"{run} has no baked asset yet: run prd mesh {run} first")
    rec = json.loads((run / "run.json").read_text(encoding="utf-8"))
    if not rec.get("hold_out_every"):
        raise OutputFolderError(f"the run in {run} held out no views: train with --hold-out N to benchmark its asset")
    cfg = DistillConfig.from_run(rec["distill"])
    cap = load_capture(rec["capture"], resolution=rec["resolution"], downscale=rec["downscale"],
                       background=tuple(rec["background"]) if rec["background"] else None)
    _, views = cap.split(rec["hold_out_every"])
    if any(v.mask is None for v in views):
        raise ValueError("the held-out photos have no alpha: this benchmark scores object pixels and needs masks")
    dest = run / "bench_asset"
    tf = cycles_transforms(views, dest / "transforms.json")
    t0 = time.time()
    light = {"name": "recovered", "file": str(run / files["environment"]), "strength": 1.0}
    info = render_glb(run / files["glb"], tf, list(range(len(views))), [light], dest, size=views[0].width,
                      height=views[0].height, samples=samples)
    cycles_s = time.time() - t0
    renders: dict[str, list[tuple]] = {"asset": []}
    for v in views:
        rgba = read_render(dest / "recovered" / f"{Path(v.name).stem}.exr")
        renders["asset"].append((rgba[..., :3], rgba[..., 3]))
    backend, _ = choose_backend(device)
    renders.update({f"gaussians_{k}": x for k, x in _gaussian_renders(run, views, backend).items()})
    bg = np.asarray(cap.background, np.float32)
    per_view: dict[str, list[dict]] = {}
    for name, items in renders.items():
        per_view[name] = [{"view": v.name, **score_view(lin, a, v.image, v.mask, bg, cfg.tonemap)}
                          for v, (lin, a) in zip(views, items, strict=True)]
    # The asset against the Gaussians it was baked from: what meshing costs the silhouette
    for r, (_, a), (_, cov) in zip(per_view["asset"], renders["asset"], renders["gaussians_phy"], strict=True):
        r["iou_gaussians"] = _iou(a > 0.5, cov > 0.5)
    means = {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k != "view"}
             for name, rs in per_view.items()}
    results = {"run": str(run), "views": len(views), "size": views[0].width, "samples": samples,
               "tonemap": cfg.tonemap, "blender": info["blender"], "faces": info["faces"],
               "cycles_seconds": round(cycles_s, 1), "means": means, "per_view": per_view}
    keys = ["image_psnr", "object_psnr", "object_psnr_fit", "iou", "iou_gaussians"]
    rows = [[name] + [("-" if k not in m else f"{m[k]:.3f}" if k.startswith("iou") else f"{m[k]:.2f}") for k in keys]
            for name, m in means.items()]
    print(table(rows, ["render", "whole image dB", "object dB", "object dB (scale fit)", "IoU vs photo",
                       "IoU vs Gaussians"]))
    return record(json_path, results)
