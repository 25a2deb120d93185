"""Visibility V(w) baked as low-order SH on a regular grid around the object, from the Gaussians.

1. **Density grid.** Each Gaussian becomes an extinction density whose optical depth, along its
   shortest axis through the centre, is ``tau = -log(1 - opacity)`` (so a ray through a flat surface
   Gaussian is attenuated by its 3DGS alpha). Its total "optical mass" ``tau * 2 pi s1 s2`` (s1, s2 its two
   largest scales) is spread over the cells with the Gaussian widened by the cell size
   (covariance + (h/2)^2 I) and renormalised on the cells, so thin Gaussians are neither missed nor
   over-counted by a coarse grid.
2. **Which cells.** Only cells within ``band`` cells of an occupied cell (cell optical depth above
   ``occupancy_tau``) are baked; the others, and points outside the grid, read as unoccluded.
3. **Marching.** From every baked cell centre, ``directions`` fixed, uniformly spread (Fibonacci)
   directions are marched through the grid with trilinear density, accumulating transmittance T;
   marching starts ``start_offset`` cells away from the centre so that a cell on the surface is not
   occluded by the blurred surface it sits on (the price: walls thinner than that leak).
   V(w) = T(w) is projected onto SH by the uniform quadrature ``(4 pi / D) sum_d T(d) Y(d)``.

The loops run in Numba (``prange`` over cells); splatting is serial (it is a scatter) and cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from ..train.sh import sh_basis

__all__ = ["VisibilityGrid", "bake_visibility", "fibonacci_directions"]


def fibonacci_directions(n: int) -> np.ndarray:
    """n nearly uniformly spread unit directions (n, 3): equal-area bands in z, golden-angle steps in phi."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


@njit(cache=True)
def _splat(density, owner, best, track, origin, h, means, cov_inv, radius, mass):
    """Adds every Gaussian's mass, spread over its cells and renormalised, to ``density`` (per volume); with
    ``track``, each cell's ``owner`` is the Gaussian that put the most mass in it (``best``), for reflection tracing."""
    nx, ny, nz = density.shape
    cell_vol = h * h * h
    for g in range(means.shape[0]):
        if mass[g] <= 0:
            continue
        lo = np.empty(3, np.int64)
        hi = np.empty(3, np.int64)
        for a in range(3):
            c = (means[g, a] - origin[a]) / h - 0.5  # continuous index of the mean
            lo[a] = max(0, int(math.floor(c - radius[g, a] / h)))
            hi[a] = min(density.shape[a] - 1, int(math.ceil(c + radius[g, a] / h)))
        if lo[0] > hi[0] or lo[1] > hi[1] or lo[2] > hi[2] or hi[0] >= nx or hi[1] >= ny or hi[2] >= nz:
            continue
        m = cov_inv[g]
        total = 0.0
        for pas in range(2):  # pass 0 sums the weights, pass 1 deposits them normalised
            if pas == 1 and total <= 0:
                break  # no cell centre inside its 3-sigma ellipsoid (e.g. outside the grid)
            scale = 0.0 if pas == 0 else mass[g] / (total * cell_vol)
            for i in range(lo[0], hi[0] + 1):
                dx = origin[0] + (i + 0.5) * h - means[g, 0]
                for j in range(lo[1], hi[1] + 1):
                    dy = origin[1] + (j + 0.5) * h - means[g, 1]
                    for k in range(lo[2], hi[2] + 1):
                        dz = origin[2] + (k + 0.5) * h - means[g, 2]
                        q = (m[0, 0] * dx * dx + m[1, 1] * dy * dy + m[2, 2] * dz * dz
                             + 2 * (m[0, 1] * dx * dy + m[0, 2] * dx * dz + m[1, 2] * dy * dz))
                        if q > 9.0:
                            continue
                        w = math.exp(-0.5 * q)
                        if pas == 0:
                            total += w
                        else:
                            density[i, j, k] += w * scale
                            if track and w * scale > best[i, j, k]:
                                best[i, j, k] = w * scale
                                owner[i, j, k] = g


@njit(inline="always")
def _trilinear(d, x, y, z):
    """Density at continuous cell-index coordinates (cell centres at integers); 0 outside."""
    nx, ny, nz = d.shape
    if x < 0 or y < 0 or z < 0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
        return 0.0
    i = min(int(x), nx - 2)
    j = min(int(y), ny - 2)
    k = min(int(z), nz - 2)
    fx = x - i
    fy = y - j
    fz = z - k
    c00 = d[i, j, k] * (1 - fx) + d[i + 1, j, k] * fx
    c10 = d[i, j + 1, k] * (1 - fx) + d[i + 1, j + 1, k] * fx
    c01 = d[i, j, k + 1] * (1 - fx) + d[i + 1, j, k + 1] * fx
    c11 = d[i, j + 1, k + 1] * (1 - fx) + d[i + 1, j + 1, k + 1] * fx
    return (c00 * (1 - fy) + c10 * fy) * (1 - fz) + (c01 * (1 - fy) + c11 * fy) * fz


@njit(parallel=True, cache=True)
def _march(density, cells, dirs, ybasis, start, step, t_min):
    """SH (n_cells, K) of the transmittance seen from each cell centre; distances in cell units."""
    n_cells = cells.shape[0]
    n_dirs = dirs.shape[0]
    kk = ybasis.shape[1]
    nx, ny, nz = density.shape
    out = np.zeros((n_cells, kk), np.float32)
    log_t_min = math.log(t_min)
    quad = 4.0 * math.pi / n_dirs
    for c in prange(n_cells):
        cx = float(cells[c, 0])
        cy = float(cells[c, 1])
        cz = float(cells[c, 2])
        for d in range(n_dirs):
            ux = dirs[d, 0]
            uy = dirs[d, 1]
            uz = dirs[d, 2]
            tau = 0.0
            t = start
            while True:
                x = cx + ux * t
                y = cy + uy * t
                z = cz + uz * t
                if x < 0 or y < 0 or z < 0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
                    break
                tau += _trilinear(density, x, y, z) * step  # density is per cell length here
                if -tau < log_t_min:
                    break
                t += step
            vis = math.exp(-tau) if -tau >= log_t_min else 0.0
            if vis > 0:
                for k in range(kk):
                    out[c, k] += np.float32(quad * vis * ybasis[d, k])
    return out


@njit(parallel=True, cache=True)
def _march_rays(density, starts, direction, step, t_max, t_min):
    """Transmittance (P,) along one direction from each start (P, 3), all in cell-index units."""
    n = starts.shape[0]
    nx, ny, nz = density.shape
    out = np.ones(n, np.float32)
    log_t_min = math.log(t_min)
    for p in prange(n):
        tau = 0.0
        t = 0.0
        while t < t_max:
            x = starts[p, 0] + direction[0] * t
            y = starts[p, 1] + direction[1] * t
            z = starts[p, 2] + direction[2] * t
            if x < 0 or y < 0 or z < 0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
                break
            tau += _trilinear(density, x, y, z) * step
            if -tau < log_t_min:
                break
            t += step
        out[p] = math.exp(-tau) if -tau >= log_t_min else 0.0
    return out


def _to_np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r + 1)^3 box, separably."""
    out = mask.copy()
    for axis in range(3):
        acc = out.copy()
        for s in range(1, r + 1):
            fwd = np.zeros_like(out)
            bwd = np.zeros_like(out)
            sl_a = [slice(None)] * 3
            sl_b = [slice(None)] * 3
            sl_a[axis], sl_b[axis] = slice(s, None), slice(None, -s)
            fwd[tuple(sl_a)] = out[tuple(sl_b)]
            bwd[tuple(sl_b)] = out[tuple(sl_a)]
            acc |= fwd | bwd
        out = acc
    return out


@dataclass
class VisibilityGrid:
    """Baked visibility: ``index`` (N, N, N) int32 into ``coeffs`` (n_baked, K), -1 = not baked.

    Cell (i, j, k) is centred at ``origin + (ijk + 0.5) * cell``."""

    origin: np.ndarray  # (3,) corner of the grid
    cell: float
    index: np.ndarray
    coeffs: np.ndarray
    order: int = 2
    # The extinction density the SH was marched through (per cell length), kept for ray-marched shadows of a
    # directional light (``transmittance``); None in grids saved before it was kept.
    density: np.ndarray | None = None
    # Per cell, the index of the Gaussian that put the most mass in it (-1: none), so that a ray marched through
    # the density knows which Gaussian it hit (``shading.reflection``); None unless baked with ``owners``.
    owner: np.ndarray | None = None

    @property
    def resolution(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.index.shape)  # type: ignore[return-value]

    def default_coeffs(self) -> np.ndarray:
        """SH of V == 1: what unbaked cells and points outside the grid read."""
        v = np.zeros((self.order + 1) ** 2, np.float32)
        v[0] = math.sqrt(4 * math.pi)
        return v

    def query(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear visibility SH (P, K) at world points (P, 3); not differentiable (the grid is frozen)."""
        dev = points.device
        table = torch.from_numpy(np.concatenate([self.coeffs, self.default_coeffs()[None]])).to(dev)
        index = torch.from_numpy(self.index).to(dev)
        dflt = table.shape[0] - 1
        res = torch.tensor(self.index.shape, device=dev)
        p = (points.detach().float() - torch.as_tensor(self.origin, dtype=torch.float32, device=dev)) / self.cell - 0.5
        p0 = torch.floor(p)
        f = p - p0
        p0 = p0.long()
        out = torch.zeros(points.shape[0], table.shape[1], device=dev)
        for corner in range(8):
            off = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=dev)
            q = p0 + off
            inside = ((q >= 0) & (q < res)).all(-1)
            qc = torch.minimum(q.clamp_min(0), res - 1)
            idx = index[qc[:, 0], qc[:, 1], qc[:, 2]].long()
            idx = torch.where(inside & (idx >= 0), idx, torch.full_like(idx, dflt))
            w = torch.where(off.bool(), f, 1 - f).prod(-1)
            out += table[idx] * w[:, None]
        return out

    def transmittance(self, points: torch.Tensor, direction: torch.Tensor, step: float = 0.5) -> torch.Tensor:
        """Transmittance (P,) from world points (P, 3) towards one unit direction (3,), marched through the
        density with ``step`` cells; without a density, the SH visibility in that direction (clamped)."""
        d = F.normalize(direction.detach().float().reshape(3), dim=0)
        if self.density is None:
            v = self.query(points)
            y = sh_basis(d[None].to(points.device), self.order)[0]
            return (v @ y).clamp(0, 1)
        idx = (points.detach().double().cpu().numpy() - self.origin) / self.cell - 0.5
        t_max = float(np.sqrt(3) * max(self.density.shape))
        out = _march_rays(self.density, np.ascontiguousarray(idx), d.double().cpu().numpy(), float(step), t_max, 1e-3)
        return torch.from_numpy(out).to(points.device)

    def save(self, path: str) -> None:
        extra = {} if self.density is None else {"density": self.density.astype(np.float32)}
        if self.owner is not None:
            extra["owner"] = self.owner.astype(np.int32)
        np.savez_compressed(path, origin=self.origin, cell=self.cell, index=self.index, coeffs=self.coeffs,
                            order=self.order, **extra)

    @classmethod
    def load(cls, path: str) -> VisibilityGrid:
        z = np.load(path)
        density = z["density"] if "density" in z.files else None
        owner = z["owner"] if "owner" in z.files else None
        return cls(z["origin"], float(z["cell"]), z["index"], z["coeffs"], int(z["order"]), density, owner)


def bake_visibility(
    means: np.ndarray | torch.Tensor,
    scales: np.ndarray | torch.Tensor,
    quats: np.ndarray | torch.Tensor,
    opacities: np.ndarray | torch.Tensor,
    resolution: int = 120,
    directions: int = 64,
    order: int = 2,
    band: int = 2,
    start_offset: float = 2.0,
    step: float = 0.8,
    occupancy_tau: float = 0.05,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    owners: bool = False,
) -> VisibilityGrid:
    """Bakes visibility SH from activated Gaussian parameters: means (N, 3), scales (N, 3) (not log),
    quats (N, 4) w-first (normalised here), opacities (N,) or (N, 1) in [0, 1].

    The grid is a cube of ``resolution``^3 cells around ``bounds`` (min, max corners; default: the
    means' bounding box plus 5 %). ``start_offset`` and ``step`` are in cells. ``owners``: also keep each cell's
    owner (``VisibilityGrid.owner``), which reflection tracing needs."""
    mu = _to_np(means)
    s = _to_np(scales)
    q = _to_np(quats)
    o = _to_np(opacities).reshape(-1)
    if bounds is None:
        lo, hi = mu.min(0), mu.max(0)
    else:
        lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    centre = (lo + hi) / 2
    half = max(float((hi - lo).max()) / 2 * 1.05, 1e-6)
    h = 2 * half / resolution
    origin = centre - half

    # Covariance R S^2 R^T, widened by the cell (h/2)^2 so the splat is resolved by the grid.
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    w, x, y, z = q.T
    rot = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(-1, 3, 3)
    cov = rot @ (s[:, :, None] ** 2 * np.transpose(rot, (0, 2, 1))) + (h / 2) ** 2 * np.eye(3)
    cov_inv = np.linalg.inv(cov)
    radius = 3 * np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    s_sorted = np.sort(s, axis=1)
    tau = -np.log1p(-np.clip(o, 0, 0.999))
    mass = tau * 2 * math.pi * s_sorted[:, 2] * s_sorted[:, 1]

    density = np.zeros((resolution,) * 3, np.float64)
    shape = (resolution,) * 3 if owners else (1, 1, 1)  # the owner grid costs as much as the density
    owner = np.full(shape, -1, np.int32)
    _splat(density, owner, np.zeros(shape), owners, origin, h, mu, cov_inv, radius, mass)
    density *= h  # extinction per cell length: the marcher works in cell units

    occupied = density > occupancy_tau
    baked = _dilate(occupied, band)
    cells = np.argwhere(baked).astype(np.int64)
    index = np.full(baked.shape, -1, np.int32)
    index[baked] = np.arange(cells.shape[0], dtype=np.int32)

    dirs = fibonacci_directions(directions)
    ybasis = sh_basis(torch.from_numpy(dirs), order).numpy().astype(np.float64)
    coeffs = _march(density.astype(np.float32), cells, dirs, ybasis, float(start_offset), float(step), 1e-3)
    return VisibilityGrid(origin.astype(np.float64), float(h), index, coeffs.astype(np.float32), order,
                          density.astype(np.float32), owner if owners else None)
