"""Indirect light from the object itself, in a form that relights: one bounce off an assumed blocker.

Where the baked visibility says the sky is blocked, the direct terms see black; Cycles sees another part of
the lit object there. That part is unknown per direction, so it is modelled: the blocker in direction w faces
back towards the shaded point (normal -w), sees the environment unoccluded and reflects it diffusely with the
shaded surface's own effective reflectance (the assumption of the multi-bounce ambient-occlusion fits: the
neighbours of a surface are made of what it is made of). Its radiance towards the point is then
``rho E(-w) / pi``, with E the environment's irradiance, an SH function with coefficients
``(-1)^l A_l L_lm`` (the flip w -> -w negates the odd bands).

The diffuse part integrates that over the blocked directions, ``integral (1 - V) L_b max(n . w, 0) dw``, with
the Gaunt contraction of ``diffuse``; the specular part reads it along the reflected direction for the
blocked fraction of the lobe (``specular_occlusion``). Both follow the light, so the term relights; both are
linear in rho, so gradients reach the material instead of the material absorbing the inter-reflection.
"""

from __future__ import annotations

import math

import torch

from .diffuse import diffuse_irradiance, hemisphere_factors, irradiance_sh, sh_order, unoccluded_sh

__all__ = ["bounce_sh", "indirect_irradiance", "indirect_radiance"]


def bounce_sh(l_sh: torch.Tensor) -> torch.Tensor:
    """SH (K, 3) of the radiance a unit-albedo Lambertian blocker sends back along -w when it sits in
    direction w: ``E(-w) / pi`` for the light SH (K, 3)."""
    order = sh_order(l_sh.shape[0])
    a = hemisphere_factors(order).to(l_sh.device, l_sh.dtype)
    parity = torch.tensor([(-1.0) ** b for b in range(order + 1) for _ in range(2 * b + 1)],
                          dtype=l_sh.dtype, device=l_sh.device)
    return (a * parity)[:, None] * l_sh / math.pi


def indirect_irradiance(n: torch.Tensor, v_sh: torch.Tensor, l_sh: torch.Tensor) -> torch.Tensor:
    """Irradiance (P, 3) arriving from the blocked directions of visibility SH (P, K) at unit normals (P, 3),
    per unit blocker reflectance."""
    order = sh_order(v_sh.shape[-1])
    blocked = unoccluded_sh(order).to(v_sh.device, v_sh.dtype) - v_sh
    return diffuse_irradiance(n, blocked, bounce_sh(l_sh)).clamp_min(0)  # SH ringing can dip below 0


def indirect_radiance(dirs: torch.Tensor, l_sh: torch.Tensor) -> torch.Tensor:
    """Radiance (P, 3) arriving along unit directions (P, 3) from a unit-albedo blocker: ``E(-dirs) / pi``."""
    return (irradiance_sh(-dirs, l_sh) / math.pi).clamp_min(0)
