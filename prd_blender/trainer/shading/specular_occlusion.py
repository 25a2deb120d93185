"""Specular occlusion from the baked SH visibility: how much of the reflection lobe sees the sky.

The split-sum specular term reads the environment along the reflected direction as if nothing were in the
way. Inside a concavity, or for a surface facing another part of the object, Cycles' path tracer sees the
object there instead.

The lobe is taken as a zonal function around the reflected direction r whose SH coefficients fall off as
``h_l = exp(-l (l + 1) s^2 / 2)``, a spherical Gaussian of angular width ``s``. GGX's half-vector lobe has a
width of about alpha / sqrt(2) (alpha = roughness^2) and reflecting doubles angles, so s = sqrt(2) alpha.
Its visible fraction is ``sum_lm h_l V_lm Y_lm(r)``.

Why a ratio: the visibility is order-2 SH, so even a flat surface's own horizon (V = 1 above the tangent
plane, 0 below) is smeared over tens of degrees and a grazing reflection would read about 0.5 there. Measured
with ground-truth materials, the plain estimate cost the glossy object 6 dB. So the lobe's visibility is
divided by the same estimate for that bare half-space around the normal n: 1 on a convex surface, below 1
only where other parts of the object block the sky.
"""

from __future__ import annotations

import math

import torch

from ..train.sh import sh_basis
from .diffuse import hemisphere_factors

__all__ = ["specular_visibility"]


def specular_visibility(v_sh: torch.Tensor, normal: torch.Tensor, refl: torch.Tensor,
                        roughness: torch.Tensor) -> torch.Tensor:
    """Visible fraction (P, 1) of the GGX reflection lobe beyond the surface's own horizon, from visibility SH
    (P, K), unit normals and reflected directions (P, 3) and perceptual roughness (P,) or (P, 1)."""
    k = v_sh.shape[-1]
    order = math.isqrt(k) - 1
    if (order + 1) ** 2 != k:
        raise ValueError(f"{k} SH coefficients is not a full SH order")
    y_r = sh_basis(refl, order).to(v_sh.dtype)  # (P, K)
    band = torch.tensor([b for b in range(order + 1) for _ in range(2 * b + 1)], dtype=v_sh.dtype,
                        device=v_sh.device)
    alpha = roughness.reshape(-1, 1).to(v_sh.dtype) ** 2
    lobe = y_r * torch.exp(-band * (band + 1) * alpha * alpha)  # s^2 / 2 = alpha^2
    seen = (v_sh * lobe).sum(-1, keepdim=True)
    half_space = hemisphere_factors(order, power=0).to(v_sh.device, v_sh.dtype)
    horizon = sh_basis(normal, order).to(v_sh.dtype) * half_space
    own = (horizon * lobe).sum(-1, keepdim=True)
    return (seen / own.clamp(0.25, 1.0)).clamp(0, 1)  # both ring above 1 near the normal
