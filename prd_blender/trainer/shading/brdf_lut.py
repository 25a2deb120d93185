"""The split-sum BRDF integration table: scale A and bias B over (n . v, roughness), computed here.

For the Cook-Torrance GGX BRDF ``f = D G F / (4 (n.l) (n.v))`` with Schlick's Fresnel
``F = F0 + (1 - F0) (1 - v.h)^5``, the directional albedo splits as ``F0 * A + B`` with
``A = E[(1 - Fc) w]``, ``B = E[Fc w]``, ``Fc = (1 - v.h)^5`` and, for h importance-sampled from
``D(h) (n.h)``, the weight ``w = G (v.h) / ((n.h) (n.v))`` (l = reflect(-v, h), samples with n.l <= 0
count as 0).

Choices: alpha = roughness^2; D = GGX / Trowbridge-Reitz; G = the height-correlated Smith masking-
shadowing for GGX, ``G2 = 1 / (1 + Lambda(v) + Lambda(l))`` with
``Lambda(x) = (sqrt(1 + alpha^2 tan^2 theta_x) - 1) / 2`` (the form Cycles' microfacet code uses, rather
than the k = alpha/2 Schlick-GGX fit). Samples: a Hammersley set, the same for every cell, so the
table is smooth. Bins are sampled at their centres: entry [i, j] is roughness (i + 0.5) / N,
n.v = (j + 0.5) / N.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["ggx_d", "smith_g2", "compute_brdf_lut", "BrdfLut", "get_brdf_lut", "DEFAULT_CACHE_DIR"]

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prd_blender"
_VERSION = 1  # bump when the maths changes, so stale cache files are not reused


def ggx_d(n_dot_h: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """GGX normal distribution D(h) (per steradian of h)."""
    a2 = np.asarray(alpha) ** 2
    return a2 / (math.pi * (n_dot_h**2 * (a2 - 1) + 1) ** 2)


def _smith_lambda(cos_t: np.ndarray, a2: np.ndarray | float) -> np.ndarray:
    c2 = np.clip(cos_t, 1e-7, 1.0) ** 2
    return (np.sqrt(1 + a2 * (1 - c2) / c2) - 1) * 0.5


def smith_g2(n_dot_v: np.ndarray, n_dot_l: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """Height-correlated Smith masking-shadowing for GGX."""
    a2 = np.asarray(alpha) ** 2
    return 1.0 / (1.0 + _smith_lambda(n_dot_v, a2) + _smith_lambda(n_dot_l, a2))


def _hammersley(n: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n, dtype=np.uint32)
    # Van der Corput radical inverse in base 2, by bit reversal.
    b = i.copy()
    b = ((b << 16) | (b >> 16)) & 0xFFFFFFFF
    b = ((b & 0x55555555) << 1) | ((b & 0xAAAAAAAA) >> 1)
    b = ((b & 0x33333333) << 2) | ((b & 0xCCCCCCCC) >> 2)
    b = ((b & 0x0F0F0F0F) << 4) | ((b & 0xF0F0F0F0) >> 4)
    b = ((b & 0x00FF00FF) << 8) | ((b & 0xFF00FF00) >> 8)
    return (i + 0.5) / n, b.astype(np.float64) / 2.0**32


def compute_brdf_lut(size: int = 128, samples: int = 1024) -> np.ndarray:
    """Table (size, size, 2) float32: [roughness index, n.v index] -> (A, B). Vectorised numpy."""
    xi1, xi2 = _hammersley(samples)
    nv = (np.arange(size) + 0.5) / size
    # View vector in the x-z plane, n = +z.
    vx, vz = np.sqrt(1 - nv**2), nv
    phi = 2 * math.pi * xi1
    out = np.empty((size, size, 2), np.float32)
    for i in range(size):  # one roughness row at a time: size x samples arrays
        alpha = ((i + 0.5) / size) ** 2
        a2 = alpha * alpha
        # GGX importance sampling of h: cos^2 theta_h = (1 - xi) / (1 + (a^2 - 1) xi).
        cos_h = np.sqrt((1 - xi2) / (1 + (a2 - 1) * xi2))
        sin_h = np.sqrt(np.clip(1 - cos_h**2, 0, 1))
        hx, hz = sin_h * np.cos(phi), cos_h  # (S,); hy does not enter v.h since v has no y
        v_dot_h = np.clip(vx[:, None] * hx[None] + vz[:, None] * hz[None], 0, 1)  # (N, S)
        n_dot_l = 2 * v_dot_h * hz[None] - vz[:, None]  # l = 2 (v.h) h - v, z component
        valid = n_dot_l > 0
        g = smith_g2(vz[:, None], n_dot_l, alpha)
        w = np.where(valid, g * v_dot_h / (hz[None] * vz[:, None]), 0.0)
        fc = (1 - v_dot_h) ** 5
        out[i, :, 0] = ((1 - fc) * w).mean(axis=1)
        out[i, :, 1] = (fc * w).mean(axis=1)
    return out


class BrdfLut:
    """The table as a torch tensor with a bilinear :meth:`lookup`."""

    def __init__(self, table: np.ndarray | torch.Tensor):
        self.table = torch.as_tensor(table, dtype=torch.float32)  # (N_rough, N_nv, 2)

    @property
    def size(self) -> int:
        return int(self.table.shape[0])

    def to(self, device: torch.device | str) -> BrdfLut:
        return BrdfLut(self.table.to(device))

    def lookup(self, n_dot_v: torch.Tensor, roughness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear (A, B), each shaped like the broadcast inputs; not differentiable (inputs detached)."""
        tab = self.table.to(n_dot_v.device)
        nr, nn = tab.shape[0], tab.shape[1]
        nv, r = torch.broadcast_tensors(n_dot_v.detach(), roughness.detach())
        x = (nv.clamp(0, 1) * nn - 0.5).clamp(0, nn - 1)
        y = (r.clamp(0, 1) * nr - 0.5).clamp(0, nr - 1)
        x0 = x.floor().long().clamp(max=nn - 2)
        y0 = y.floor().long().clamp(max=nr - 2)
        fx = (x - x0)[..., None]
        fy = (y - y0)[..., None]
        v = (tab[y0, x0] * (1 - fx) + tab[y0, x0 + 1] * fx) * (1 - fy) + (
            tab[y0 + 1, x0] * (1 - fx) + tab[y0 + 1, x0 + 1] * fx
        ) * fy
        return v[..., 0], v[..., 1]


@functools.lru_cache(maxsize=8)
def _cached(size: int, samples: int, cache_dir: str | None) -> BrdfLut:
    path = Path(cache_dir) / f"brdf_lut_v{_VERSION}_{size}_{samples}.npy" if cache_dir else None
    if path is not None and path.is_file():
        try:
            table = np.load(path)
            if table.shape == (size, size, 2):
                return BrdfLut(table)
        except (OSError, ValueError):
            pass  # unreadable cache: recompute
    table = compute_brdf_lut(size, samples)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, table)
            os.replace(tmp, path)  # atomic: concurrent trainers never read half a file
        except OSError:
            pass  # caching is optional
    return BrdfLut(table)


def get_brdf_lut(size: int = 128, samples: int = 1024, cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> BrdfLut:
    """The table, computed once per process (and cached as .npy in ``cache_dir`` unless it is None)."""
    return _cached(int(size), int(samples), str(cache_dir) if cache_dir is not None else None)
