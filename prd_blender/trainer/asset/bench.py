"""``prd bench mesh``: geometry and texture fidelity of the baked asset on the synthetic relighting objects.

Per object: Chamfer distance between the extracted mesh and the ground-truth ``mesh.ply`` (mean of both
directions, area-uniform surface samples, in % of the GT bounding-box diagonal), the watertightness report,
and the albedo texture rendered on the baked mesh from the test cameras vs the Cycles albedo pass (PSNR
after a per-channel scale fit, like ``bench relight``), next to the same metric for the Gaussians' own
splatted albedo so that the loss due to baking is visible.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from numba import njit
from PIL import Image

from .gltf import read_ply_mesh

# ------------------------------------------------------------------------------------ mesh rendering


@njit(cache=True)
def _raster_mesh(pix, z, uvs, faces, W, H, tri, bary, zbuf):  # pragma: no cover - numba
    """Z-buffered triangles with perspective-correct barycentrics. pix (V, 2) pixel coords, z (V,) camera z."""
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        if z[a] <= 1e-6 or z[b] <= 1e-6 or z[c] <= 1e-6:
            continue
        x0, y0, x1, y1, x2, y2 = pix[a, 0], pix[a, 1], pix[b, 0], pix[b, 1], pix[c, 0], pix[c, 1]
        den = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(den) < 1e-12:
            continue
        xmin = max(int(np.floor(min(x0, x1, x2) - 0.5)), 0)
        xmax = min(int(np.ceil(max(x0, x1, x2) - 0.5)), W - 1)
        ymin = max(int(np.floor(min(y0, y1, y2) - 0.5)), 0)
        ymax = min(int(np.ceil(max(y0, y1, y2) - 0.5)), H - 1)
        for y in range(ymin, ymax + 1):
            for x in range(xmin, xmax + 1):
                px, py = x + 0.5, y + 0.5
                l0 = ((y1 - y2) * (px - x2) + (x2 - x1) * (py - y2)) / den
                l1 = ((y2 - y0) * (px - x2) + (x0 - x2) * (py - y2)) / den
                l2 = 1.0 - l0 - l1
                if l0 < 0 or l1 < 0 or l2 < 0:
                    continue
                # perspective-correct: interpolate 1/z linearly in screen space
                w0, w1, w2 = l0 / z[a], l1 / z[b], l2 / z[c]
                s = w0 + w1 + w2
                depth = 1.0 / s
                if depth < zbuf[y, x]:
                    zbuf[y, x] = depth
                    tri[y, x] = f
                    bary[y, x, 0] = w0 / s
                    bary[y, x, 1] = w1 / s
                    bary[y, x, 2] = w2 / s


def sample_bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (H, W, C) at UVs (M, 2) in Blender's convention (v up)."""
    H, W = img.shape[:2]
    x = np.clip(uv[:, 0] * W - 0.5, 0, W - 1)
    y = np.clip((1 - uv[:, 1]) * H - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    return ((1 - ax) * (1 - ay) * img[y0, x0] + ax * (1 - ay) * img[y0, x1]
            + (1 - ax) * ay * img[y1, x0] + ax * ay * img[y1, x1])


def render_textured(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
                    viewmat: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a UV-textured mesh (unlit) from an OpenCV camera: (image (H, W, C), mask (H, W))."""
    cam = vertices @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    zs = np.where(z > 1e-6, z, 1e-6)
    pix = np.stack([K[0, 0] * cam[:, 0] / zs + K[0, 2], K[1, 1] * cam[:, 1] / zs + K[1, 2]], 1)
    tri = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3))
    zbuf = np.full((height, width), np.inf)
    _raster_mesh(pix, z, uvs, faces, width, height, tri, bary, zbuf)
    mask = tri >= 0
    out = np.zeros((height, width, texture.shape[2]))
    f = faces[tri[mask]]
    uv = (uvs[f] * bary[mask][..., None]).sum(1)
    out[mask] = sample_bilinear(texture, uv)
    return out, mask


# ------------------------------------------------------------------------------------ geometry metrics


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly distributed over the surface area."""
    rng = np.random.default_rng(seed)
    v = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    idx = rng.choice(len(faces), n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1 - s, s * (1 - r2), s * r2
    return w0[:, None] * v[idx, 0] + w1[:, None] * v[idx, 1] + w2[:, None] * v[idx, 2]


def chamfer(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], n: int = 100_000) -> dict:
    """Chamfer distance (mean of the two mean nearest-neighbour distances) and both directions, in % of the
    GT bounding-box diagonal; also the 95th percentile of pred->gt (floaters / bulges show there)."""
    from scipy.spatial import cKDTree

    diag = float(np.linalg.norm(gt[0].max(0) - gt[0].min(0)))
    p = sample_surface(*pred, n, seed=1)
    g = sample_surface(*gt, n, seed=2)
    d_pg = cKDTree(g).query(p)[0]
    d_gp = cKDTree(p).query(g)[0]
    return {
        "chamfer_pct": float(50.0 * (d_pg.mean() + d_gp.mean()) / diag),
        "accuracy_pct": float(100.0 * d_pg.mean() / diag),
        "completeness_pct": float(100.0 * d_gp.mean() / diag),
        "accuracy_p95_pct": float(100.0 * np.percentile(d_pg, 95) / diag),
        "gt_diagonal": diag,
    }


# ------------------------------------------------------------------------------------ the benchmark


def _read_texture(path: Path) -> np.ndarray:
    x = np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)  # sRGB PNG -> linear albedo


def texture_fidelity(run: Path, obj, test_views) -> dict:
    """Albedo PSNR (scale-fitted, linear) of the baked texture on the mesh and of the Gaussians' splat."""
    from ..bench.relight_data import scale_fit_psnr
    from ..outputs import read_manifest
    from ..train.gaussians import Gaussians
    from ..train.render import Camera
    from .surface import render_views

    files = read_manifest(run)["files"]
    verts, faces, uvs = _read_uv_ply(run / files["mesh"])
    tex = _read_texture(run / files["texture_albedo"])
    model = Gaussians.load_ply(run / files["gaussians"])
    baked, splat = [], []
    for view, gt in zip(test_views, obj.views, strict=True):
        K, w2c = np.asarray(view.K, np.float64), np.asarray(view.world_to_cam, np.float64)
        img, mask = render_textured(verts, faces, uvs, tex, w2c, K, view.width, view.height)
        m = (gt.mask > 0.5) & mask
        baked.append(scale_fit_psnr(img, gt.albedo, m))
        cam = Camera(view.name, torch.tensor(w2c, dtype=torch.float32), torch.tensor(K, dtype=torch.float32),
                     view.width, view.height, torch.tensor(np.linalg.inv(w2c)[:3, 3], dtype=torch.float32),
                     torch.zeros(0), None)
        vs = render_views(model, [cam], "cpu")
        cov = vs.coverage[0]
        alb = vs.feats[0, ..., :3] / np.maximum(cov[..., None], 1e-6)
        splat.append(scale_fit_psnr(alb, gt.albedo, (gt.mask > 0.5) & (cov > 0.5)))
    return {"albedo_psnr_baked": float(np.mean(baked)), "albedo_psnr_gaussians": float(np.mean(splat))}


def _read_uv_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our mesh.ply: vertices, faces and the s/t UVs."""
    verts, faces = read_ply_mesh(path)
    with open(path, "rb") as fh:
        head = b""
        while not head.endswith(b"end_header\n"):
            head += fh.readline()
        names = [ln.split()[2] for ln in head.decode().splitlines() if ln.startswith("property float")]
        data = np.frombuffer(fh.read(len(verts) * 4 * len(names)), "<f4").reshape(len(verts), len(names))
    uv = data[:, [names.index("s"), names.index("t")]].astype(np.float64)
    return verts, faces, uv


def bench_mesh(data: Path, objects: list[str], runs: Path, quality: str, texture_size: int, iterations: int,
               distill_iterations: int, resolution: int, json_path: Path | None) -> dict:
    """Bake and measure each object. ``runs/<object>`` is used when it holds a finished run; otherwise a run
    is trained there first with the given iteration counts and resolution."""
    from ..bench.relight_data import load_relight_object
    from ..capture import load_capture
    from ..outputs import read_manifest
    from .bake import bake_asset
    from .surface import edge_report

    results: dict = {"quality": quality, "texture_size": texture_size, "objects": {}}
    for name in objects:
        obj = load_relight_object(data / name)
        run = runs / name
        t0 = time.time()
        done = (run / "manifest.json").is_file() and read_manifest(run).get("status") == "complete"
        if not done:
            from ..pipeline import run_train
            from ..train.distill import DistillConfig

            n = distill_iterations
            run_train(obj.train_transforms, run, iterations=iterations, resolution=resolution,
                      distill=DistillConfig(stage2=n, stage3=n, stage4=n), quiet=True, overwrite=True)
        train_s = time.time() - t0
        summary = bake_asset(run, quality=quality, texture_size=texture_size)
        verts, faces, _ = _read_uv_ply(run / summary["files"]["mesh"])
        gt = read_ply_mesh(obj.mesh)
        # UV seams split vertices; weld by position to judge the surface's topology
        _, weld = np.unique(verts.round(9), axis=0, return_inverse=True)
        res = {
            **chamfer((verts, faces), gt), **edge_report(weld.reshape(-1)[faces]),
            "faces": int(len(faces)), "train_seconds": round(train_s, 1), "bake_seconds": summary["seconds"],
        }
        # at the benchmark's full size, where the GT albedo passes are
        res.update(texture_fidelity(run, obj, load_capture(obj.test_transforms).views))
        results["objects"][name] = res
        print(json.dumps({"event": "bench_mesh", "object": name, **res}), flush=True)
    from ..bench.common import record

    return record(json_path, results)  # adds the command, the machine and the date

