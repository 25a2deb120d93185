"""Deferred physically based shading of per-pixel G-buffer channels, and tone mapping.

``I_spec = prefiltered(L, reflect(-v, n), r) * (F0 * A + B)`` (split sum, GGX),
``F0 = 0.04 (1 - m) + c m``, ``I_diff = c / pi * integral V L max(n . w, 0) dw`` (SH, see ``diffuse``),
``I_phy = (1 - m) I_diff + I_spec``; all linear HDR. ``v`` is the unit direction from the surface
towards the camera.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .brdf_lut import BrdfLut
from .diffuse import diffuse_irradiance, irradiance_sh
from .envmap import EnvironmentLight

__all__ = [
    "reflect", "shade", "linear_to_srgb", "srgb_to_linear", "aces_filmic", "aces_filmic_inverse", "tonemap",
]


def reflect(d: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mirror direction of d about the normal n: d - 2 (d . n) n."""
    return d - 2 * (d * n).sum(-1, keepdim=True) * n


def shade(
    albedo: torch.Tensor,
    roughness: torch.Tensor,
    metallic: torch.Tensor,
    normal: torch.Tensor,
    view_dir: torch.Tensor,
    vis_sh: torch.Tensor | None,
    light: EnvironmentLight,
    lut: BrdfLut,
    levels: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Shades P pixels: albedo (P, 3), roughness and metallic (P,) or (P, 1), normal and view_dir (P, 3)
    (normalised here; view_dir points from the surface to the camera), visibility SH (P, K) or None for
    unoccluded. Returns ``diffuse`` (= c/pi * E), ``specular`` and ``phy``, each (P, 3) linear HDR.
    ``levels``: a mip chain from ``light.prefiltered_levels()`` to share between calls."""
    n = F.normalize(normal, dim=-1)
    v = F.normalize(view_dir, dim=-1)
    r = roughness.reshape(-1, 1)
    m = metallic.reshape(-1, 1)
    n_dot_v = (n * v).sum(-1, keepdim=True).clamp(1e-4, 1.0)  # back-facing normals: treat as grazing
    refl = reflect(-v, n)
    pre = light.specular(refl, r, levels)
    a, b = lut.lookup(n_dot_v[:, 0], r[:, 0])
    f0 = 0.04 * (1 - m) + albedo * m
    spec = pre * (f0 * a[:, None] + b[:, None])
    order = 2 if vis_sh is None else math.isqrt(vis_sh.shape[-1]) - 1
    l_sh = light.sh_coeffs(order)
    irr = irradiance_sh(n, l_sh) if vis_sh is None else diffuse_irradiance(n, vis_sh, l_sh)
    diff = albedo / math.pi * irr.clamp_min(0)  # SH ringing can dip below 0; light cannot
    return {"diffuse": diff, "specular": spec, "phy": (1 - m) * diff + spec}


# --------------------------------------------------------------------------------------------- tone maps


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """The exact sRGB OETF (piecewise: 12.92 x below 0.0031308, else 1.055 x^(1/2.4) - 0.055).
    Negative input gives the linear branch; the power is evaluated on a clamped copy so its gradient is
    finite at 0."""
    hi = 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055
    return torch.where(x <= 0.0031308, 12.92 * x, hi)


def srgb_to_linear(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`linear_to_srgb`."""
    hi = ((y.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(y <= 0.04045, y / 12.92, hi)


# Narkowicz's fit of the ACES reference rendering transform: (x (a x + b)) / (x (c x + d) + e).
_ACES = (2.51, 0.03, 2.43, 0.59, 0.14)


def aces_filmic(x: torch.Tensor) -> torch.Tensor:
    """ACES-style filmic curve on linear values, output display-linear in [0, 1] (apply
    :func:`linear_to_srgb` after it for an sRGB image)."""
    a, b, c, d, e = _ACES
    x = x.clamp_min(0)
    return ((x * (a * x + b)) / (x * (c * x + d) + e)).clamp(0, 1)


def aces_filmic_inverse(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`aces_filmic` on [0, 1] (the curve reaches 1 at x = 7.24): the non-negative root
    of (c y - a) x^2 + (d y - b) x + e y = 0, whose roots have opposite signs."""
    a, b, c, d, e = _ACES
    y = y.clamp(0, 1)
    qa = c * y - a
    qb = d * y - b
    qc = e * y
    disc = (qb * qb - 4 * qa * qc).clamp_min(0)
    return ((-qb - torch.sqrt(disc)) / (2 * qa)).clamp_min(0)


def tonemap(x: torch.Tensor, mode: str = "srgb") -> torch.Tensor:
    """Linear HDR -> display [0, 1]: ``"srgb"`` (Blender's Standard view transform: clamp + OETF) or
    ``"aces"`` (filmic curve, then the OETF)."""
    if mode == "srgb":
        return linear_to_srgb(x.clamp(0, 1))
    if mode == "aces":
        return linear_to_srgb(aces_filmic(x))
    raise ValueError(f"unknown tone map {mode!r} (expected 'srgb' or 'aces')")
