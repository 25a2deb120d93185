"""Rendering a view of the radiance field (stage 1's I_raw) through the rasteriser."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..capture import View
from ..raster import RasterOutput, rasterization
from .gaussians import Gaussians
from .sh import eval_sh


@dataclass
class Camera:
    """A view's camera as tensors, plus its image (H, W, 3) and mask (H, W) or None."""

    name: str
    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    centre: torch.Tensor
    image: torch.Tensor
    mask: torch.Tensor | None

    @classmethod
    def from_view(cls, v: View) -> Camera:
        return cls(
            name=v.name,
            viewmat=torch.as_tensor(v.world_to_cam, dtype=torch.float32),
            K=torch.as_tensor(v.K, dtype=torch.float32),
            width=v.width,
            height=v.height,
            centre=torch.as_tensor(v.center, dtype=torch.float32),
            image=torch.as_tensor(np.ascontiguousarray(v.image), dtype=torch.float32),
            mask=None if v.mask is None else torch.as_tensor(v.mask, dtype=torch.float32),
        )


def camera_depths(model: Gaussians, cam: Camera) -> torch.Tensor:
    """Each Gaussian's camera z (N,), with gradient to its mean."""
    return model.means @ cam.viewmat[2, :3] + cam.viewmat[2, 3]


def depth_spread_channel(model: Gaussians, cam: Camera) -> tuple[torch.Tensor, float]:
    """The channel (N, 1) that ``train.losses.depth_distortion`` needs splatted: each Gaussian's squared camera z
    about a reference depth, and that reference (the Gaussians' median z). Centring keeps float32's cancellation in
    the per-pixel variance small."""
    z = camera_depths(model, cam)
    ref = float(z.detach().median())
    return ((z - ref) ** 2)[:, None], ref


def render_radiance(
    model: Gaussians, cam: Camera, sh_degree: int, backend: str, background: torch.Tensor,
    normals: bool = False, extra: torch.Tensor | None = None,
) -> tuple[torch.Tensor, RasterOutput]:
    """The radiance field seen from ``cam``: image (H, W, 3) over ``background``, and the raw output.

    ``normals``: also splat each Gaussian's normal in the same pass; ``out.features`` then holds the colour
    (3 channels) followed by the coverage-weighted normal (3 channels). ``extra`` (N, E): more per-Gaussian
    channels splatted in the same pass, last in ``out.features``.
    """
    dirs = F.normalize(model.means.detach() - cam.centre, dim=-1)
    colors = eval_sh(model.sh, dirs, sh_degree).clamp_min(0)
    feats = torch.cat([colors, model.normals(cam.centre)], dim=1) if normals else colors
    if extra is not None:
        feats = torch.cat([feats, extra], dim=1)
    out = rasterization(
        model.means, model.quats, model.scales, model.opacities, feats, cam.viewmat, cam.K,
        cam.width, cam.height, backend=backend,
    )
    img = out.features[..., :3] + (1 - out.alpha[..., None]) * background
    return img, out


def splatted_normals(out: RasterOutput) -> torch.Tensor:
    """The unit normal map (H, W, 3) of a ``render_radiance(..., normals=True)`` output."""
    return F.normalize(out.features[..., 3:6] / out.alpha[..., None].clamp_min(1e-6), dim=-1)


# Order of the channels splatted for deferred shading (12 features; depth comes with the rasteriser).
PBR_CHANNELS = {"albedo": 3, "roughness": 1, "metallic": 1, "progress": 1, "normal": 3, "raw": 3}


def pixel_rays(cam: Camera) -> torch.Tensor:
    """World-space direction (H, W, 3) through each pixel centre, scaled so its camera z is 1."""
    ys, xs = torch.meshgrid(
        torch.arange(cam.height, dtype=torch.float32) + 0.5, torch.arange(cam.width, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    d_cam = torch.stack([(xs - cam.K[0, 2]) / cam.K[0, 0], (ys - cam.K[1, 2]) / cam.K[1, 1], torch.ones_like(xs)], -1)
    return d_cam @ cam.viewmat[:3, :3]  # rows times R = R^T applied: camera -> world


def render_pbr_maps(model: Gaussians, cam: Camera, sh_degree: int, backend: str,
                    raw_fixed_geometry: bool = False, depth_spread: bool = False) -> dict[str, torch.Tensor]:
    """Splat every PRD channel once; return per-pixel maps normalised by coverage.

    ``raw_fixed_geometry``: splat the radiance field's colour in a second pass whose positions, shapes and
    opacities are detached, so that the image loss moves the geometry only through the physical branch
    (the radiance branch still learns its colour). One more rasterisation.

    ``depth_spread``: also splat ``depth_spread_channel`` in the same pass, for ``train.losses.depth_distortion``.

    Keys: the PBR_CHANNELS (normal renormalised), ``coverage`` (H, W, 1), ``depth`` (H, W, 1),
    ``position`` (H, W, 3) world space, ``view`` (H, W, 3) unit vector from the surface to the camera; with
    ``depth_spread``, ``depth_spread`` (H, W, 1, coverage-weighted, not normalised) and ``depth_ref`` (a float).
    """
    dirs = F.normalize(model.means.detach() - cam.centre, dim=-1)
    feats = {
        "albedo": model.pbr("albedo"), "roughness": model.pbr("roughness"), "metallic": model.pbr("metallic"),
        "progress": model.pbr("progress"), "normal": model.normals(cam.centre),
        "raw": eval_sh(model.sh, dirs, sh_degree).clamp_min(0),
    }
    raw = feats["raw"]
    if raw_fixed_geometry:
        feats["raw"] = torch.zeros_like(raw)  # keeps the channel layout; filled by the second pass below
    stacked = torch.cat([feats[k] for k in PBR_CHANNELS], dim=1)
    if depth_spread:
        spread, ref = depth_spread_channel(model, cam)
        stacked = torch.cat([stacked, spread], dim=1)
    out = rasterization(
        model.means, model.quats, model.scales, model.opacities, stacked, cam.viewmat, cam.K,
        cam.width, cam.height, backend=backend,
    )
    cov = out.alpha[..., None]
    feats_out = out.features[..., :-1] if depth_spread else out.features
    maps = dict(zip(PBR_CHANNELS, torch.split(feats_out / cov.clamp_min(1e-6), list(PBR_CHANNELS.values()), -1),
                    strict=True))
    if depth_spread:
        maps["depth_spread"] = out.features[..., -1:]
        maps["depth_ref"] = ref
    if raw_fixed_geometry:
        fixed = rasterization(
            model.means.detach(), model.quats.detach(), model.scales.detach(), model.opacities.detach(), raw,
            cam.viewmat, cam.K, cam.width, cam.height, backend=backend,
        )
        maps["raw"] = fixed.features / fixed.alpha[..., None].clamp_min(1e-6)
    maps["normal"] = F.normalize(maps["normal"], dim=-1)
    maps["coverage"] = cov
    maps["depth"] = out.depth[..., None]
    maps["position"] = cam.centre + pixel_rays(cam) * maps["depth"]
    maps["view"] = F.normalize(cam.centre - maps["position"], dim=-1)
    maps["_out"] = out
    return maps


def depth_normals(position: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normals (H, W, 3) of the rendered depth surface by central differences, facing the camera, and a
    mask (H, W) of pixels where all four neighbours exist (border pixels are excluded)."""
    p = position
    dx = torch.zeros_like(p)
    dy = torch.zeros_like(p)
    dx[:, 1:-1] = p[:, 2:] - p[:, :-2]
    dy[1:-1] = p[2:] - p[:-2]
    n = F.normalize(torch.cross(dx, dy, dim=-1), dim=-1)
    n = torch.where((n * view).sum(-1, keepdim=True) < 0, -n, n)
    inner = torch.zeros(p.shape[:2], dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    return n, inner


def normal_consistency(normal: torch.Tensor, coverage: torch.Tensor, depth: torch.Tensor,
                       cam: Camera) -> torch.Tensor | None:
    """Depth-normal consistency (as in 2DGS / GS-IR): 1 - cos between the splatted normals (H, W, 3, unit)
    and the normals of the rendered depth surface, averaged over solid inner pixels (coverage (H, W, 1) above
    0.9); None where there are none. Both sides carry gradients: the depth surface flattens towards the
    Gaussians' orientation and the Gaussians turn towards the surface they form."""
    position = cam.centre + pixel_rays(cam) * depth
    n_depth, inner = depth_normals(position, F.normalize(cam.centre - position, dim=-1))
    solid = inner & (coverage[..., 0] > 0.9)
    if not bool(solid.any()):
        return None
    return (1 - (normal * n_depth).sum(-1)[solid]).mean()
