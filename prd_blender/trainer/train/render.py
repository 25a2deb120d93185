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


def render_radiance(
    model: Gaussians, cam: Camera, sh_degree: int, backend: str, background: torch.Tensor
) -> tuple[torch.Tensor, RasterOutput]:
    """The radiance field seen from ``cam``: image (H, W, 3) over ``background``, and the raw output."""
    dirs = F.normalize(model.means.detach() - cam.centre, dim=-1)
    colors = eval_sh(model.sh, dirs, sh_degree).clamp_min(0)
    out = rasterization(
        model.means, model.quats, model.scales, model.opacities, colors, cam.viewmat, cam.K,
        cam.width, cam.height, backend=backend,
    )
    img = out.features + (1 - out.alpha[..., None]) * background
    return img, out
