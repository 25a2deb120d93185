"""Dense pure-PyTorch rasteriser: every Gaussian at every pixel, gradients by autograd.

Slow (O(pixels x Gaussians) memory) and only for testing the fast backends and for benchmarks.
It applies exactly the compositing rules of the kernels: alpha = min(ALPHA_MAX, o * G), terms below
ALPHA_MIN skipped, front-to-back order by depth, and a stop before transmittance reaches T_MIN.
"""

from __future__ import annotations

import torch

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, Projected


def composite_dense(
    proj: Projected, opacities: torch.Tensor, features: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians: returns features (H, W, C) and alpha (H, W)."""
    order = torch.argsort(proj.depths.detach(), stable=True)
    order = order[proj.valid[order]]
    m = proj.means2d[order]
    con = proj.conics[order]
    o = opacities[order]
    f = features[order]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=m.dtype) + 0.5, torch.arange(width, dtype=m.dtype) + 0.5, indexing="ij"
    )
    dx = xs.reshape(-1, 1) - m[None, :, 0]
    dy = ys.reshape(-1, 1) - m[None, :, 1]
    power = -0.5 * (con[None, :, 0] * dx * dx + con[None, :, 2] * dy * dy) - con[None, :, 1] * dx * dy
    alpha = torch.clamp(o[None, :] * torch.exp(power), max=ALPHA_MAX)
    alpha = torch.where((alpha >= ALPHA_MIN) & (power <= 0), alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        keep = torch.cumprod(1 - alpha, dim=1) > T_MIN
    alpha = alpha * keep
    trans = torch.cumprod(1 - alpha, dim=1)
    trans_before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
    weights = alpha * trans_before
    out = (weights @ f).reshape(height, width, -1)
    if trans.shape[1] == 0:
        return out, torch.zeros(height, width, dtype=m.dtype)
    return out, (1 - trans[:, -1]).reshape(height, width)
