"""Quadrature over the sphere for the SH tests: exact for the low-order polynomials they project."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from prd_blender.trainer.train.sh import sh_basis


def sphere_quadrature(n_z: int = 48, n_phi: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions (n_z * n_phi, 3) float64 and weights summing to 4 pi (Gauss-Legendre in z, uniform in phi)."""
    z, wz = np.polynomial.legendre.leggauss(n_z)
    ph = (np.arange(n_phi) + 0.5) * 2 * math.pi / n_phi
    zz, pp = np.meshgrid(z, ph, indexing="ij")
    rr = np.sqrt(1 - zz**2)
    dirs = torch.tensor(np.stack([rr * np.cos(pp), rr * np.sin(pp), zz], -1).reshape(-1, 3))
    w = torch.tensor((wz[:, None] * np.full(n_phi, 2 * math.pi / n_phi)).reshape(-1))
    return dirs, w


def project_sh(fn: Callable[[torch.Tensor], torch.Tensor], order: int) -> torch.Tensor:
    """SH coefficients (K,) float32 of a function of direction, e.g. a 0/1 visibility."""
    dirs, w = sphere_quadrature()
    return (sh_basis(dirs, order) * (fn(dirs).double() * w)[:, None]).sum(0).float()
