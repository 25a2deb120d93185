"""Image losses and metrics: L1, SSIM (11x11 Gaussian window, sigma 1.5), PSNR."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _window(size: int = 11, sigma: float = 1.5, channels: int = 3) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


_WINDOWS: dict[int, torch.Tensor] = {}


def ssim(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two (H, W, C) images in [0, 1] (standard constants, zero-padded borders as in 3DGS)."""
    c = img.shape[-1]
    if c not in _WINDOWS:
        _WINDOWS[c] = _window(channels=c)
    w = _WINDOWS[c].to(img.device, img.dtype)
    a = img.permute(2, 0, 1)[None]
    b = ref.permute(2, 0, 1)[None]
    pad = w.shape[-1] // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=c)
    mu_b = F.conv2d(b, w, padding=pad, groups=c)
    saa = F.conv2d(a * a, w, padding=pad, groups=c) - mu_a * mu_a
    sbb = F.conv2d(b * b, w, padding=pad, groups=c) - mu_b * mu_b
    sab = F.conv2d(a * b, w, padding=pad, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s.mean()


def image_loss(img: torch.Tensor, ref: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """(1 - w) * L1 + w * (1 - SSIM): the loss of every stage (DESIGN.md section 3)."""
    return (1 - ssim_weight) * (img - ref).abs().mean() + ssim_weight * (1 - ssim(img, ref))


def albedo_smoothness(albedo: torch.Tensor, coverage: torch.Tensor, image: torch.Tensor,
                      sharpness: float = 10.0) -> torch.Tensor:
    """Edge-aware total variation of a splatted albedo map (H, W, 3) over covered pixels.

    Each neighbour difference is weighted by exp(-sharpness * |image difference|): albedo may change where
    the photo does (texture edges), not across smooth shading, which is the light's and the normals' to
    explain. Without it, diffuse albedo and light trade off freely (intrinsic-image ambiguity).
    """
    inside = (coverage[..., 0] > 0.5).float()
    terms, count = [], inside.sum().clamp_min(1.0)
    for dim in (0, 1):
        n = albedo.shape[dim] - 1
        da = (albedo.narrow(dim, 1, n) - albedo.narrow(dim, 0, n)).abs().sum(-1)
        di = (image.narrow(dim, 1, n) - image.narrow(dim, 0, n)).abs().mean(-1)
        both = inside.narrow(dim, 1, n) * inside.narrow(dim, 0, n)
        terms.append((da * torch.exp(-sharpness * di) * both).sum())
    return (terms[0] + terms[1]) / count


def psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((img.clamp(0, 1) - ref) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))
