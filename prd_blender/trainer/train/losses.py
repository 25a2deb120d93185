"""Image losses and metrics: L1, SSIM (11x11 Gaussian window, sigma 1.5), PSNR."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .sh import sh_basis


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


def edge_aware_smoothness(values: torch.Tensor, coverage: torch.Tensor, image: torch.Tensor,
                          sharpness: float = 10.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Edge-aware total variation of a splatted material map (H, W, C) over covered pixels.

    Each neighbour difference is weighted by exp(-sharpness * |image difference|): a material may change where
    the photo does (texture edges), not across smooth shading, which is the light's and the normals' to
    explain. For the albedo: without it, diffuse albedo and light trade off freely (intrinsic-image ambiguity).
    ``sharpness`` 0: plain total variation. ``weight`` (H, W): each difference also takes the smaller of its two
    pixels' weights (the term then acts only where both pixels carry weight).
    """
    inside = (coverage[..., 0] > 0.5).float()
    terms, count = [], inside.sum().clamp_min(1.0)
    for dim in (0, 1):
        n = values.shape[dim] - 1
        da = (values.narrow(dim, 1, n) - values.narrow(dim, 0, n)).abs().sum(-1)
        di = (image.narrow(dim, 1, n) - image.narrow(dim, 0, n)).abs().mean(-1)
        both = inside.narrow(dim, 1, n) * inside.narrow(dim, 0, n)
        if weight is not None:
            both = both * torch.minimum(weight.narrow(dim, 1, n), weight.narrow(dim, 0, n))
        terms.append((da * torch.exp(-sharpness * di) * both).sum())
    return (terms[0] + terms[1]) / count


def flatten_loss(log_scales: torch.Tensor) -> torch.Tensor:
    """Mean over Gaussians of the shortest axis over the middle one (``log_scales`` (N, 3)). The middle axis
    is detached, so the term thins each Gaussian towards a disc without widening it: a flat Gaussian's shortest
    axis, the PRD normal, is then well defined. Scale-free, so one weight fits any scene size."""
    s = torch.sort(log_scales, dim=1).values
    return torch.exp(s[:, 0] - s[:, 1].detach()).mean()


def depth_distortion(spread: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor, ref: float) -> torch.Tensor:
    """How far apart along each ray the Gaussians that make up a pixel lie (as 2DGS and Mip-NeRF 360's
    distortion, with squared distances): the mean over pixels of sum_ij w_i w_j (z_i - z_j)^2 / 2, which is
    alpha^2 times the blend weights' depth variance, over the pixel's depth squared (detached) so that it is
    scale-free. A faint layer in front of the surface (a false floor in a crevice) costs it; one thin surface
    does not. ``spread`` (H, W, 1) is ``render.depth_spread_channel`` splatted, ``alpha`` and ``depth`` (H, W, 1)
    the same pass's coverage and expected depth, ``ref`` the channel's reference depth."""
    s1 = alpha * (depth - ref)
    pair = (alpha * spread - s1 * s1).clamp_min(0)  # float32 can leave a hair below zero
    return (pair / depth.detach().clamp_min(1e-3) ** 2).mean()


class AlbedoOrientation:
    """How much of the log-albedo a smooth function of the normal explains, pooled over the views seen.

    Per channel, the splatted log-albedo is regressed on the degree-0 to -2 spherical harmonics of the
    (detached) normal, from moments averaged over views (``decay`` per view: 1 weighs every view alike). An
    error in a learned light's low-frequency irradiance is a function of the normal, and a diffuse surface's
    free albedo absorbs it as exactly such a pattern; a real texture follows the surface's orientation only by
    chance, which pooling over views averages out (one view sees half the normals, with its own chance fit).
    """

    def __init__(self, decay: float = 0.98, ridge: float = 1e-4) -> None:
        self.decay, self.ridge = decay, ridge
        self.gram: torch.Tensor | None = None  # running mean of b b^T (9, 9)
        self.cross: torch.Tensor | None = None  # running mean of b x^T (9, 3)
        self.weight = 0.0

    def _coefficients(self) -> torch.Tensor:
        g = self.gram / self.weight
        g = g + self.ridge * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype)  # few normals: ill-posed
        return torch.linalg.solve(g, self.cross / self.weight)

    def update(self, albedo: torch.Tensor, normal: torch.Tensor, coverage: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor | None:
        """Add this view's moments (no gradient), each pixel weighted by ``weight`` (H, W, 1; None: alike).
        Returns the covered pixels' normals; None (nothing added) with fewer than 32 of them or a total weight
        under 32 (e.g. all metal)."""
        inside = coverage[..., 0] > 0.5
        if int(inside.sum()) < 32:
            return None
        n = normal[inside].detach()
        x = torch.log(albedo[inside].detach().clamp_min(1e-3))
        b = sh_basis(n, 2)
        w = torch.ones_like(b[:, :1]) if weight is None else weight[inside].detach().clamp_min(0)
        total = w.sum()
        if float(total) < 32:
            return None
        g, h = b.T @ (w * b) / total, b.T @ (w * x) / total
        first = self.gram is None
        self.gram = g if first else self.decay * self.gram + g
        self.cross = h if first else self.decay * self.cross + h
        self.weight = 1.0 if first else self.decay * self.weight + 1.0
        return n

    def pattern(self, normal: torch.Tensor) -> torch.Tensor:
        """The pooled fit's log-albedo pattern (N, 3) at unit normals (N, 3), mean zero over them."""
        out = sh_basis(normal, 2)[:, 1:] @ self._coefficients()[1:]
        return out - out.mean(0)

    def step(self, albedo: torch.Tensor, normal: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """Add this view's moments; return a loss whose gradient pulls each covered pixel's log-albedo against
        the pooled pattern, so that descent removes the pattern. Zero with fewer than 32 covered pixels."""
        n = self.update(albedo, normal, coverage)
        if n is None:
            return albedo.sum() * 0.0
        x = torch.log(albedo[coverage[..., 0] > 0.5].clamp_min(1e-3))
        return (x * self.pattern(n)).sum(-1).mean()

    def explained(self) -> float:
        """Variance of the pooled log-albedo that the fitted function of the normal explains (summed over
        channels); 0 before any view."""
        if self.gram is None:
            return 0.0
        g = self.gram / self.weight
        mean = g[0, 1:] / g[0, 0].sqrt()  # the first basis function is a constant
        cov = g[1:, 1:] - mean[:, None] * mean[None, :]
        c = self._coefficients()[1:]
        return float((c * (cov @ c)).sum())

    def state_dict(self) -> dict:
        return {"gram": self.gram, "cross": self.cross, "weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        self.gram, self.cross, self.weight = state["gram"], state["cross"], state["weight"]


def psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((img.clamp(0, 1) - ref) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))
