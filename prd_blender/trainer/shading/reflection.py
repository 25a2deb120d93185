"""Specular inter-reflection: the mirror direction traced through the visibility grid to the Gaussian it hits.

The split sum reads the environment along the reflected direction as if nothing were in the way; the SH
visibility (``specular_occlusion``) and the assumed blocker of ``indirect`` put back a blurred, diffuse stand-in
for what the object shows of itself there. A smooth metal mirrors the object: the ball in the bowl, the sphere
in the torus. Cycles without inter-reflection is 18-21 dB (pooled over the test views) from Cycles with it on the
glossy and on the mixed benchmark objects (docs/benchmarks.md, relighting run 31): the largest part of what those
objects' shading ceiling lacks.

For each shaded pixel a ray is marched from just off the surface along the reflected direction through the
grid's extinction density. It returns the transmittance T to the sky and the first cell where its opacity passes
one half. The grid remembers, per cell, the Gaussian that put the most mass in it (``VisibilityGrid.owner``, baked
with ``owners=True``), so the hit is a Gaussian of the model and is shaded with its current material and normal
under the same light: gradients reach the hit's material and the light, and the term relights. The hit is
shaded once (its diffuse under the light's SH and its own SH visibility, its specular from the mip chain, the sun
if there is one), with no further bounce.

Measured (run 31): on the true mesh it raises glossy's relighting ceiling by 1.0 dB; on trained Gaussians it does
not pay yet (their surface is fuzzy and their normals smoothed across creases), so ``DistillConfig.reflection_trace``
is off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from .brdf_lut import BrdfLut
from .envmap import EnvironmentLight
from .shade import shade
from .sun import Sun, sun_radiance
from .visibility import VisibilityGrid, _trilinear

__all__ = ["BounceSource", "hit_radiance", "trace_reflections"]

# The hit is the first point where the ray's opacity passes this.
_HIT_OPACITY = 0.5


@dataclass
class BounceSource:
    """Per-Gaussian inputs of the hit's shading, indexed like the grid's ``owner``: means and shortest axes
    (N, 3), albedo (N, 3), roughness and metallic (N, 1)."""

    means: torch.Tensor
    axes: torch.Tensor
    albedo: torch.Tensor
    roughness: torch.Tensor
    metallic: torch.Tensor


@njit(parallel=True, cache=True)
def _march_hits(density, starts, dirs, step, t_max, t_min, hit_opacity):
    """Per ray (starts and unit dirs (P, 3), cell-index units): transmittance to the grid's edge and the cell
    (i, j, k) nearest the point where the opacity first passed ``hit_opacity`` ((-1, -1, -1): never)."""
    n = starts.shape[0]
    nx, ny, nz = density.shape
    trans = np.ones(n, np.float32)
    hits = np.full((n, 3), -1, np.int64)
    log_t_min = math.log(t_min)
    log_hit = math.log(1.0 - hit_opacity)
    for p in prange(n):
        tau = 0.0
        t = 0.0
        found = False
        while t < t_max:
            x = starts[p, 0] + dirs[p, 0] * t
            y = starts[p, 1] + dirs[p, 1] * t
            z = starts[p, 2] + dirs[p, 2] * t
            if x < 0 or y < 0 or z < 0 or x > nx - 1 or y > ny - 1 or z > nz - 1:
                break
            tau += _trilinear(density, x, y, z) * step
            if not found and -tau < log_hit:
                found = True
                hits[p, 0] = min(max(int(round(x)), 0), nx - 1)
                hits[p, 1] = min(max(int(round(y)), 0), ny - 1)
                hits[p, 2] = min(max(int(round(z)), 0), nz - 1)
            if -tau < log_t_min:
                break
            t += step
        trans[p] = math.exp(-tau) if -tau >= log_t_min else 0.0
    return trans, hits


def trace_reflections(vis: VisibilityGrid, points: torch.Tensor, dirs: torch.Tensor,
                      step: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays from world points (P, 3) along unit directions (P, 3): transmittance (P,) and the index of the
    Gaussian hit (P,) (-1: none, or a grid saved without owners). Not differentiable (the grid is frozen)."""
    if vis.density is None:
        raise ValueError("reflection tracing needs a visibility grid with its density (re-bake it)")
    idx = (points.detach().double().cpu().numpy() - vis.origin) / vis.cell - 0.5
    d = F.normalize(dirs.detach().double(), dim=-1).cpu().numpy()
    t_max = float(np.sqrt(3) * max(vis.density.shape))
    trans, hits = _march_hits(vis.density, np.ascontiguousarray(idx), np.ascontiguousarray(d), float(step), t_max,
                              1e-3, _HIT_OPACITY)
    gauss = np.full(len(trans), -1, np.int64)
    if vis.owner is not None:
        ok = hits[:, 0] >= 0
        gauss[ok] = vis.owner[hits[ok, 0], hits[ok, 1], hits[ok, 2]]
    dev = points.device
    return torch.from_numpy(trans).to(dev), torch.from_numpy(gauss).to(dev)


def hit_radiance(source: BounceSource, gauss: torch.Tensor, dirs: torch.Tensor, light: EnvironmentLight,
                 levels: list[torch.Tensor], lut: BrdfLut, vis: VisibilityGrid, visibility_offset: float,
                 sun: Sun | None = None) -> torch.Tensor:
    """Radiance (P, 3) that the hit Gaussians ``gauss`` (P,) (all >= 0) send back along the rays ``dirs`` (P, 3):
    the hit shaded once (``shade.shade``, mip chain ``levels``, its own SH visibility) with its normal turned to
    face the ray's origin, plus the sun if given."""
    axis = source.axes[gauss]
    v = -F.normalize(dirs, dim=-1)
    n = axis * torch.where((axis * v).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    albedo, rough, metal = source.albedo[gauss], source.roughness[gauss], source.metallic[gauss]
    start = source.means[gauss].detach() + n.detach() * (visibility_offset * vis.cell)
    out = shade(albedo, rough, metal, n, v, vis.query(start), light, lut, levels)["phy"]
    if sun is not None:
        out = out + sun_radiance(albedo, rough, metal, n, v, sun, vis.transmittance(start, sun.direction))
    return out
