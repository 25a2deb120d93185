"""Albedo refinement through Cycles: the asset is rendered by the renderer it is made for, and its albedo texture
is corrected towards the training photos.

Why: the trainer shades with a split-sum GGX, SH irradiance and a learned visibility grid; Cycles path-traces the
mesh. The materials fitted through the first look different in the second wherever the two disagree (occlusion in
crevices the mesh lost or kept differently, multiscatter GGX, inter-reflection). Each step renders the GLB with
Cycles at the training cameras under the recovered light, takes the per-pixel log ratio photo / render on the
object, carries it onto the texels with the bake's own gather (the texel's point projected into every view,
depth-tested against the mesh, weighted by cos²), and multiplies the albedo texture by its exponential. Diffuse
and metallic reflection both scale with the albedo, so the update is the classic multiplicative fixed point of
inverse global illumination; Cycles' inter-reflections are in the render, so they are not baked into the albedo.

Cycles is reached through ``render_cycles`` (a subprocess: the ``bpy`` module, ``$PRD_BPY_PYTHON`` or a Blender
binary); the trainer never imports bpy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ..outputs import OutputFolderError, read_manifest, update_manifest
from .bake import _srgb_encode, _to_u8, dilate, gather, texel_surface
from .surface import ViewStack, raster_view
from .uv import UVMesh, mikk_tangents, padding_for

STEPS = 2  # the second step takes up what the first overshot through inter-reflection and specular clipping
MAX_STEP_RATIO = 4.0  # one step changes a pixel's ratio by at most this factor either way
MAX_TOTAL_RATIO = 8.0  # nor may all steps together move a texel's albedo further than this
MAX_SIDE = 256  # refinement renders: longer image side (the correction is smooth; texture detail stays baked)
SAMPLES = 16  # Cycles samples per pixel, denoised


def read_uv_mesh(path: Path) -> UVMesh:
    """The baked mesh (``mesh.ply``: positions, normals, UVs) as the ``UVMesh`` the GLB was written from."""
    from .gltf import read_ply_columns

    cols, faces = read_ply_columns(path)
    v = np.stack([cols[k] for k in "xyz"], 1).astype(np.float64)
    uv = np.stack([cols["s"], cols["t"]], 1).astype(np.float64)
    n = np.stack([cols[k] for k in ("nx", "ny", "nz")], 1).astype(np.float64)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
    faces = faces.astype(np.int64)
    return UVMesh(v, faces, n, uv, mikk_tangents(v, faces, n, uv), np.arange(len(v)))


def mesh_depth(mesh: UVMesh, view) -> np.ndarray:
    """Camera z of the mesh's nearest surface at each pixel of ``view`` (inf where the mesh is not)."""
    return raster_view(mesh.vertices, mesh.faces, np.asarray(view.world_to_cam, np.float64),
                       np.asarray(view.K, np.float64), view.width, view.height)[2]


def log_ratio(photo_linear: np.ndarray, mask: np.ndarray | None, render: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel log(photo / render) (H, W, 3), clipped to ±log MAX_STEP_RATIO, and where it holds (H, W): on the
    object in the photo (when it has alpha) and fully covered by the render, one pixel in from either edge, where
    a pixel mixes object and background."""
    inside = render[..., 3] > 0.99
    if mask is not None:
        inside &= mask > 0.5
    valid = ndimage.binary_erosion(inside, iterations=1)
    eps = 1e-3  # near-black pixels carry no ratio worth trusting
    lr = np.log((np.clip(photo_linear, 0, None) + eps) / (np.clip(render[..., :3], 0, None) + eps))
    return np.clip(lr, -np.log(MAX_STEP_RATIO), np.log(MAX_STEP_RATIO)) * valid[..., None], valid


def _training_views(out: Path, rec: dict) -> list:
    from ..capture import load_capture

    res = rec.get("resolution")
    try:
        cap = load_capture(rec["capture"], resolution=min(res, MAX_SIDE) if res else MAX_SIDE,
                           background=tuple(rec["background"]) if rec.get("background") else None)
    except (OSError, ValueError) as exc:
        raise OutputFolderError(f"the refinement needs the run's training photos ({rec['capture']}): {exc}") from exc
    train, _ = cap.split(rec.get("hold_out_every") or 0)
    return train


def _remove_renders(folder: Path, views: list) -> None:
    """Delete exactly what one step's Cycles job wrote (never the folder's other contents)."""
    for v in views:
        (folder / "recovered" / f"{Path(v.name).stem}.exr").unlink(missing_ok=True)
    (folder / "render.json").unlink(missing_ok=True)
    for d in (folder / "recovered", folder):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def refine_albedo(out: Path, steps: int = STEPS, samples: int = SAMPLES,
                  progress: Callable[[dict], None] | None = None) -> dict:
    """Refine ``out``'s baked albedo through Cycles (see the module); rewrites ``mesh_albedo.png`` and ``mesh.glb``
    and records the steps in the manifest's ``asset.refine``. Returns that record."""
    from ..train.distill import DistillConfig, inverse_tonemap
    from .bench import _read_texture, read_render
    from .gltf import write_glb
    from .render_cycles import cycles_transforms, render_glb

    out = Path(out)
    manifest = read_manifest(out)
    files = manifest.get("files", {})
    for role in ("glb", "mesh", "texture_albedo", "environment"):
        if role not in files:
            raise OutputFolderError(f"{out} has no {role} file: train all four stages and run prd mesh first")
    rec = json.loads((out / "run.json").read_text(encoding="utf-8"))
    tone = DistillConfig.from_run(rec["distill"]).tonemap
    views = _training_views(out, rec)
    mesh = read_uv_mesh(out / files["mesh"])
    albedo_png = out / files["texture_albedo"]
    base = _read_texture(albedo_png)
    S = base.shape[0]
    inside, _, _, P, N = texel_surface(mesh, S)
    tol = 3.0 * float(manifest.get("asset", {}).get("voxel", 0.01))
    work = out / "refine"
    tf = cycles_transforms(views, work / "transforms.json")
    light = {"name": "recovered", "file": str(out / files["environment"]), "strength": 1.0}
    photos = [inverse_tonemap(torch.from_numpy(v.image.astype(np.float32)), tone).numpy() for v in views]
    # One stack for every step, float32 as the bake's own views, three channels (the log ratio): 200 views at
    # 256 px hold 0.26 GB, not the 1.4 GB that float64 ratio images and an 8-channel copy of them took.
    H, W = views[0].height, views[0].width
    feats = np.zeros((len(views), H, W, 3), np.float32)
    covs = np.zeros((len(views), H, W), np.float32)
    depth = np.stack([mesh_depth(mesh, v) for v in views])
    stack = ViewStack(np.stack([np.asarray(v.world_to_cam, np.float64) for v in views]),
                      np.stack([np.asarray(v.K, np.float64) for v in views]),
                      np.array([[v.width, v.height] for v in views]),
                      np.where(np.isfinite(depth), depth, 0.0).astype(np.float32), covs, feats)
    total = np.zeros((S, S, 3))  # log of the accumulated correction
    history = []
    for step in range(steps + 1):  # the last pass only measures
        t0 = time.time()
        render_glb(out / files["glb"], tf, list(range(len(views))), [light], work / f"step{step}",
                   size=views[0].width, height=views[0].height, samples=samples)
        errs = []
        for i, (v, photo) in enumerate(zip(views, photos, strict=True)):
            rgba = read_render(work / f"step{step}" / "recovered" / f"{Path(v.name).stem}.exr")
            lr, valid = log_ratio(photo, v.mask, rgba)
            feats[i] = lr
            covs[i] = valid
            errs.append(float(np.abs(lr[valid]).mean()) if valid.any() else 0.0)
        entry = {"step": step, "mean_abs_log_ratio": float(np.mean(errs)), "render_s": round(time.time() - t0, 1)}
        if step == steps:  # the final renders stay for inspection (photo against asset, view by view)
            history.append(entry)
            break
        _remove_renders(work / f"step{step}", views)
        acc, w = gather(P, N, stack, tol)
        seen = w > 0
        corr = np.zeros((len(P), 3))
        corr[seen] = acc[seen] / w[seen, None]
        img = np.zeros((S, S, 3))
        img[inside] = corr
        img, filled = dilate(img, inside, 2 * padding_for(S) + 2)
        img[~filled] = 0.0
        total = np.clip(total + img, -np.log(MAX_TOTAL_RATIO), np.log(MAX_TOTAL_RATIO))
        albedo = np.clip(base * np.exp(total), 0.0, 1.0)
        tmp = albedo_png.with_name(albedo_png.name + ".tmp")
        Image.fromarray(_to_u8(_srgb_encode(albedo)), "RGB").save(tmp, format="PNG")
        tmp.replace(albedo_png)
        write_glb(out / files["glb"], mesh, {r: out / files[r] for r in ("texture_albedo", "texture_orm",
                                                                          "texture_normal")})
        entry.update(texels_seen=float(seen.mean()), median_correction=np.exp(np.median(corr[seen], 0)).tolist()
                     if seen.any() else [1.0, 1.0, 1.0])
        history.append(entry)
        if progress:
            progress({"event": "refine", "steps": steps, **entry})
    result = {"steps": steps, "views": len(views), "size": views[0].width, "samples": samples, "history": history}
    update_manifest(out, asset={**manifest.get("asset", {}), "refine": result})
    return result
