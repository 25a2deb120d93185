"""The shading model's ceiling on the relighting benchmark: I_phy computed from the ground truth.

Albedo, roughness, metallic and normals come from Cycles' passes, the light is the true HDRI, the
visibility grid is baked from the true mesh (each triangle as a flat, opaque Gaussian) and positions come
from rasterising that mesh. What is left between this and Cycles is what split-sum specular, SH-order-2
visibility and the approximate one-bounce indirect term cannot represent (hard sun shadows, the true
inter-reflection, grazing lobes): no training can beat it, so it is reported next to the trained variants.
With ``reflection_trace`` the traced reflections hit the mesh's triangles, their material read from the passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..asset.gltf import read_ply_mesh
from ..capture import View
from ..raster import rasterization
from ..shading.brdf_lut import get_brdf_lut
from ..shading.envmap import EnvironmentLight
from ..shading.hdr_io import read_image
from ..shading.reflection import BounceSource
from ..shading.visibility import bake_visibility
from ..train.distill import DistillConfig, relight_environment, shade_maps
from ..train.render import Camera, pixel_rays
from .relight_data import RelightObject
from .relight_score import FITS, relight_psnr


def mesh_as_gaussians(vertices: np.ndarray, faces: np.ndarray) -> tuple[torch.Tensor, ...]:
    """One flat, opaque Gaussian per triangle: means, quats (w first), scales (not log), opacities."""
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    cross = np.cross(b - a, c - a)
    twice_area = np.linalg.norm(cross, axis=1, keepdims=True).clip(1e-12)
    n = cross / twice_area
    e1 = (b - a) / np.linalg.norm(b - a, axis=1, keepdims=True).clip(1e-12)
    rot = np.stack([e1, np.cross(n, e1), n], axis=2)  # columns: the Gaussian's axes, the last one thin
    # Rotation matrix -> quaternion (w first); rot is proper, so w >= 0 after the sign choice below.
    w = np.sqrt(np.clip(1 + rot[:, 0, 0] + rot[:, 1, 1] + rot[:, 2, 2], 1e-12, None)) / 2
    x = (rot[:, 2, 1] - rot[:, 1, 2]) / (4 * w)
    y = (rot[:, 0, 2] - rot[:, 2, 0]) / (4 * w)
    z = (rot[:, 1, 0] - rot[:, 0, 1]) / (4 * w)
    quats = np.stack([w, x, y, z], 1)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    side = 0.7 * np.sqrt(twice_area[:, 0] / 2)  # covers the triangle about as a disc of equal area would
    scales = np.stack([side, side, np.full_like(side, 1e-4 * side.mean())], 1)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return f32((a + b + c) / 3), f32(quats), f32(scales), torch.full((len(faces),), 0.99)


def mesh_bounce_source(vertices: np.ndarray, faces: np.ndarray, means: torch.Tensor, quats: torch.Tensor,
                       scales: torch.Tensor, opac: torch.Tensor, obj: RelightObject,
                       test_views: list[View]) -> BounceSource:
    """What a traced reflection hits on the true mesh (``reflection_trace``): each triangle's material read from
    Cycles' passes at its centre in the test views that see it (mean over them), the mean of those seen elsewhere."""
    a, b, c = (torch.from_numpy(vertices[faces[:, k]].astype(np.float32)) for k in range(3))
    normals = F.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1)
    acc, count = torch.zeros(len(faces), 5), torch.zeros(len(faces))
    for view, gt in zip(test_views, obj.views, strict=True):
        cam = Camera.from_view(view)
        h, w = gt.mask.shape
        depth = rasterization(means, quats, scales, opac, torch.zeros(len(means), 1), cam.viewmat, cam.K, w, h,
                              backend="cpu").depth
        p_cam = means @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3]
        uvw = p_cam @ cam.K.T
        u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
        seen = (p_cam[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui, vi = u.long().clamp(0, w - 1), v.long().clamp(0, h - 1)
        # visible: the rendered depth at the centre's pixel is the centre's own (2 %: a pixel spans a triangle)
        seen &= ((depth[vi, ui] - p_cam[:, 2]).abs() < 0.02 * p_cam[:, 2]) & (torch.from_numpy(gt.mask)[vi, ui] > 0.5)
        vals = torch.cat([torch.from_numpy(gt.albedo)[vi, ui], torch.from_numpy(gt.roughness)[vi, ui, None],
                          torch.from_numpy(gt.metallic)[vi, ui, None]], 1)
        acc[seen] += vals[seen]
        count[seen] += 1
    seen = count > 0
    acc[seen] /= count[seen, None]
    acc[~seen] = acc[seen].mean(0) if bool(seen.any()) else 0.5
    return BounceSource(means, normals, acc[:, :3].contiguous(), acc[:, 3:4].contiguous(), acc[:, 4:5].contiguous())


@torch.no_grad()
def shading_ceiling(obj: RelightObject, test_views: list[View], hdri_dir: Path, cfg: DistillConfig) -> dict:
    """PSNR of ground-truth-driven I_phy against Cycles under the training HDRI and each relighting HDRI,
    scored exactly like the trained variants (``relight_score.relight_psnr``), under ``fit_all`` also with
    the scale fitted on every pixel."""
    if obj.mesh is None:
        raise FileNotFoundError(f"{obj.root}: no mesh.ply, cannot compute the shading ceiling")
    verts, faces = read_ply_mesh(obj.mesh)
    means, quats, scales, opac = mesh_as_gaussians(verts, faces)
    lo, hi = verts.min(0), verts.max(0)
    pad = 0.05 * float((hi - lo).max())
    vis = bake_visibility(means, scales, quats, opac, resolution=cfg.visibility_resolution, bounds=(lo - pad, hi + pad),
                          owners=cfg.reflection_trace)
    lut = get_brdf_lut()
    source = mesh_bounce_source(verts, faces, means, quats, scales, opac, obj, test_views) if cfg.reflection_trace \
        else None
    infos = [obj.meta["hdri"], *obj.meta["relight_hdris"]]
    lights = {i["name"]: relight_environment(EnvironmentLight(cfg.light_resolution, init=read_image(
        hdri_dir / i["file"]) * float(i.get("strength", 1.0))), cfg) for i in infos}
    scores: dict[str, dict[str, list[float]]] = {fit: {name: [] for name in lights} for fit in FITS}
    for view, gt in zip(test_views, obj.views, strict=True):
        cam = Camera.from_view(view)
        h, w = gt.mask.shape
        out = rasterization(means, quats, scales, opac, torch.zeros(len(means), 1), cam.viewmat, cam.K, w, h,
                            backend="cpu")
        rays = pixel_rays(cam)
        maps = {
            "albedo": torch.from_numpy(gt.albedo), "roughness": torch.from_numpy(gt.roughness)[..., None],
            "metallic": torch.from_numpy(gt.metallic)[..., None],
            "normal": F.normalize(torch.from_numpy(gt.normal), dim=-1), "view": -F.normalize(rays, dim=-1),
            "position": cam.centre + rays * out.depth[..., None],
            "progress": torch.ones(h, w, 1), "raw": torch.zeros(h, w, 3),
        }
        mask = gt.mask > 0.5
        for name, (light, sun) in lights.items():
            phy = shade_maps(maps, light, lut, vis, 4, cfg, sun, source)["phy"].numpy()
            if name == obj.hdri:
                lin, disp = gt.linear, gt.image
            else:
                lin, disp = gt.relit_linear[name], gt.relit[name]
            for fit in FITS:
                scores[fit][name].append(relight_psnr(phy, lin, disp, mask, fit))

    def summary(fit: str) -> dict:
        per = {name: float(np.mean(v)) for name, v in scores[fit].items()}
        return {"training_hdri_psnr": per[obj.hdri],
                "relight_psnr": float(np.mean([per[n] for n in obj.relight_hdris])), "per_hdri": per}

    # the scale fit of relighting runs 1-7 too (relight_score), to compare with their records
    return {**summary("display"), "fit_all": summary("all")}
