"""Diffuse irradiance with visibility, all in real spherical harmonics (the basis of ``train.sh.sh_basis``).

``E(n) = integral V(w) L(w) max(n . w, 0) dw`` with V (per pixel) and L (global) given as SH of order
2 (9 coefficients) or 3 (16). The clamped-cosine lobe around n is a zonal function; rotated to n its
coefficients are ``c_lm(n) = A_l Y_lm(n)`` (addition theorem), ``A_l = sqrt(4 pi / (2l + 1)) k_l``,
``k_l = integral max(z, 0) Y_l0 dw`` (A = pi, 2 pi / 3, pi / 4, 0). Then
``E = sum_ijk G_ijk V_i L_j c_k`` with the Gaunt (triple-product) tensor ``G_ijk = integral Y_i Y_j Y_k``.
Both G and A are computed here by exact quadrature (Gauss-Legendre in z times a uniform grid in phi is
exact for these polynomials), not taken from tables. The lobe is truncated at the SH order, as in the
classic irradiance-from-SH formula, which this reduces to when V == 1 (V_0 = sqrt(4 pi)).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..train.sh import sh_basis

__all__ = [
    "gaunt_tensor", "sh_order", "hemisphere_factors", "cosine_lobe_coeffs", "diffuse_irradiance", "irradiance_sh",
    "unoccluded_sh",
]


def sh_order(k: int) -> int:
    """The SH order (0-3) of ``k`` coefficients per channel."""
    order = math.isqrt(k) - 1
    if (order + 1) ** 2 != k or order not in (0, 1, 2, 3):
        raise ValueError(f"{k} SH coefficients is not a supported order (1, 4, 9 or 16)")
    return order


def _sphere_quadrature(n_z: int, n_phi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions (n_z * n_phi, 3) and weights summing to 4 pi, exact for polynomials of degree < min(2 n_z, n_phi)."""
    z, wz = np.polynomial.legendre.leggauss(n_z)
    phi = (np.arange(n_phi) + 0.5) * (2 * math.pi / n_phi)
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz**2)
    dirs = np.stack([r * np.cos(pp), r * np.sin(pp), zz], axis=-1).reshape(-1, 3)
    w = (wz[:, None] * np.full(n_phi, 2 * math.pi / n_phi)[None]).reshape(-1)
    return torch.from_numpy(dirs), torch.from_numpy(w)


@functools.lru_cache(maxsize=4)
def gaunt_tensor(order: int = 2) -> torch.Tensor:
    """G (K, K, K), K = (order + 1)^2: integral of Y_i Y_j Y_k over the sphere (float32, symmetric)."""
    dirs, w = _sphere_quadrature(3 * order + 2, 6 * order + 4)  # product degree 3 * order
    y = sh_basis(dirs, order)  # float64
    g = torch.einsum("ni,nj,nk,n->ijk", y, y, y, w)
    g[g.abs() < 1e-12] = 0.0  # exact zeros (selection rules) stay zero
    return g.float()


@functools.lru_cache(maxsize=8)
def hemisphere_factors(order: int, power: int = 1) -> torch.Tensor:
    """a_l per coefficient (K,) of the zonal function max(n . w, 0)^power: its SH coefficients are
    a_l Y_lm(n). power 1 is the clamped cosine (the A_l of irradiance), power 0 the half-space n . w > 0.
    By quadrature over z in [0, 1]."""
    t, wt = np.polynomial.legendre.leggauss(16)
    z = torch.from_numpy(0.5 * (t + 1))  # nodes on [0, 1]
    wz = torch.from_numpy(0.5 * wt) * (2 * math.pi)  # dw = dz dphi; zonal: phi integrates to 2 pi
    dirs = torch.stack([torch.sqrt(1 - z * z), torch.zeros_like(z), z], dim=-1)
    y = sh_basis(dirs, order)
    out = []
    for band in range(order + 1):
        k_l = (y[:, band * band + band] * z**power * wz).sum()  # m = 0 coefficient along +z
        out += [float(math.sqrt(4 * math.pi / (2 * band + 1)) * k_l)] * (2 * band + 1)
    return torch.tensor(out, dtype=torch.float32)


def cosine_lobe_coeffs(n: torch.Tensor, order: int = 2) -> torch.Tensor:
    """SH coefficients (P, K) of max(n . w, 0) for unit normals (P, 3)."""
    return sh_basis(n, order) * hemisphere_factors(order).to(n.device, n.dtype)


def unoccluded_sh(order: int = 2) -> torch.Tensor:
    """SH (K,) of V == 1."""
    v = torch.zeros((order + 1) ** 2)
    v[0] = math.sqrt(4 * math.pi)
    return v


def irradiance_sh(n: torch.Tensor, l_sh: torch.Tensor) -> torch.Tensor:
    """Classic irradiance (P, 3) from light SH (K, 3) without visibility: sum_k A_l L_k Y_k(n)."""
    order = sh_order(l_sh.shape[0])
    return cosine_lobe_coeffs(n, order) @ l_sh


def diffuse_irradiance(n: torch.Tensor, v_sh: torch.Tensor, l_sh: torch.Tensor) -> torch.Tensor:
    """Irradiance (P, 3) = integral V L max(n . w, 0) dw for normals (P, 3), visibility SH (P, K) and
    light SH (K, 3); differentiable in all three. Multiply by albedo / pi for the diffuse radiance."""
    k = v_sh.shape[-1]
    if l_sh.shape[0] != k:
        raise ValueError(f"visibility has {k} SH coefficients but the light has {l_sh.shape[0]}")
    order = sh_order(k)
    g = gaunt_tensor(order).to(l_sh.device, l_sh.dtype)
    c = cosine_lobe_coeffs(n, order).to(v_sh.dtype)  # (P, K)
    # H[i, k, ch] = sum_j G_ijk L_j: contracting the light first keeps per-pixel memory at (P, K).
    h = torch.einsum("ijk,jc->ikc", g, l_sh)
    return torch.stack([((v_sh @ h[..., ch]) * c).sum(-1) for ch in range(l_sh.shape[1])], dim=-1)
