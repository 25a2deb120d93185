"""Held-out view metrics: of the radiance field (stage 1) or of the final PRD blend (stages 2-4)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .capture import View
from .train.gaussians import Gaussians
from .train.losses import psnr, ssim
from .train.render import Camera, render_radiance


def _mean_metrics(views: list[View], render: Callable[[Camera], torch.Tensor]) -> dict:
    per_view = []
    for v in views:
        cam = Camera.from_view(v)
        img = render(cam).clamp(0, 1)
        per_view.append({"name": v.name, "psnr": psnr(img, cam.image), "ssim": float(ssim(img, cam.image))})
    n = max(len(per_view), 1)
    return {
        "psnr": sum(p["psnr"] for p in per_view) / n,
        "ssim": sum(p["ssim"] for p in per_view) / n,
        "views": per_view,
    }


@torch.no_grad()
def evaluate_views(
    model: Gaussians, views: list[View], sh_degree: int, backend: str, background: tuple[float, float, float]
) -> dict:
    """Mean PSNR and SSIM of the radiance field on ``views`` (images in [0, 1], over the background)."""
    bg = torch.tensor(background, dtype=torch.float32)
    return _mean_metrics(views, lambda cam: render_radiance(model, cam, sh_degree, backend, bg)[0])


@torch.no_grad()
def evaluate_distilled(model, light, vis, views: list[View], cfg, backend: str, background) -> dict:
    """Mean PSNR / SSIM of the final PRD blend on ``views`` (novel views use the blend, DESIGN.md §3)."""
    from .shading.brdf_lut import get_brdf_lut
    from .train.distill import bounce_source, composite, shade_maps, trained_environment
    from .train.render import render_pbr_maps

    bg = torch.tensor(background, dtype=torch.float32)
    lut = get_brdf_lut()
    sky, sun = trained_environment(light, cfg)
    source = bounce_source(model, cfg)

    def render(cam: Camera) -> torch.Tensor:
        maps = render_pbr_maps(model, cam, cfg.sh_degree, backend)
        return composite(shade_maps(maps, sky, lut, vis, 4, cfg, sun, source)["blend"], maps["coverage"], bg)

    return _mean_metrics(views, render)
