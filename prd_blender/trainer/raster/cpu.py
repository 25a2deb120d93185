"""CPU backend: tile-based compositing of 2D Gaussians, forward and backward, compiled with Numba.

Why Numba: it ships wheels for Linux, macOS (Intel and Apple silicon) and Windows, so the trainer
needs no C++ toolchain on the user's machine, and ``prange`` spreads tiles over all cores. Kernels
accumulate in float64 so that they are more accurate than the float32 reference they are tested
against. Gradients are accumulated per (tile, Gaussian) pair, which one thread owns, and summed per
Gaussian afterwards: no atomics, deterministic results.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN

TILE = 16


@njit(cache=True)
def _bin_gaussians(means2d, radii, order, width, height, tile):
    """Lists, per tile, the Gaussians whose extent touches it, front to back (``order`` is by depth)."""
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    n_tiles = tiles_x * tiles_y
    n = order.shape[0]
    rect = np.empty((n, 4), np.int64)
    counts = np.zeros(n_tiles + 1, np.int64)
    for j in range(n):
        g = order[j]
        rx = radii[g, 0]
        ry = radii[g, 1]
        if rx <= 0 or ry <= 0:
            rect[j, 0] = 0
            rect[j, 1] = -1
            continue
        x0 = max(0, int(math.floor((means2d[g, 0] - rx) / tile)))
        x1 = min(tiles_x - 1, int(math.floor((means2d[g, 0] + rx) / tile)))
        y0 = max(0, int(math.floor((means2d[g, 1] - ry) / tile)))
        y1 = min(tiles_y - 1, int(math.floor((means2d[g, 1] + ry) / tile)))
        rect[j, 0] = x0
        rect[j, 1] = x1
        rect[j, 2] = y0
        rect[j, 3] = y1
        for ty in range(y0, y1 + 1):
            for tx in range(x0, x1 + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], np.int64)
    for j in range(n):
        if rect[j, 1] < rect[j, 0]:
            continue
        for ty in range(rect[j, 2], rect[j, 3] + 1):
            for tx in range(rect[j, 0], rect[j, 1] + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = order[j]
                fill[t] += 1
    return offsets, ids


@njit(cache=True)
def _balanced_tile_order(n_tiles, n_threads):
    # prange hands each thread one contiguous block; interleaving tiles evens out the load when the
    # object sits in one part of the image.
    out = np.empty(n_tiles, np.int64)
    k = 0
    for r in range(n_threads):
        for t in range(r, n_tiles, n_threads):
            out[k] = t
            k += 1
    return out


@njit(inline="always")
def _gather_tile(means2d, conics, opac, feats, ids, start, end):
    # Tile-local, contiguous copies (like CUDA shared memory): the pixel loops then stream through
    # memory instead of chasing ids. ``skip`` is log(ALPHA_MIN / o) minus a margin: a power below it
    # gives alpha < ALPHA_MIN for sure, so most far-away Gaussians cost no exp().
    n = end - start
    n_ch = feats.shape[1]
    geo = np.empty((n, 7), np.float64)
    f = np.empty((n, n_ch), np.float32)
    for j in range(n):
        g = ids[start + j]
        geo[j, 0] = means2d[g, 0]
        geo[j, 1] = means2d[g, 1]
        geo[j, 2] = conics[g, 0]
        geo[j, 3] = conics[g, 1]
        geo[j, 4] = conics[g, 2]
        geo[j, 5] = opac[g]
        geo[j, 6] = math.log(ALPHA_MIN / max(opac[g], 1e-30)) - 1e-6
        for c in range(n_ch):
            f[j, c] = feats[g, c]
    return geo, f


@njit(inline="always")
def _row_span(geo, j, y, x0, x1):
    """Pixels [lo, hi) of row ``y`` within [x0, x1) where Gaussian j's power can reach its skip level.

    Solves a dx^2 + 2 b dx dy + c dy^2 <= -2 skip for dx: one square root per Gaussian and row
    replaces a full evaluation per pixel. Widened by a hair so rounding never drops a pixel; the
    per-pixel test still decides exactly as the reference does.
    """
    a = geo[j, 2]
    dy = y - geo[j, 1]
    bb = geo[j, 3] * dy
    cc = geo[j, 4] * dy * dy + 2.0 * geo[j, 6]
    disc = bb * bb - a * cc
    if disc < 0.0 or a <= 0.0:
        return 0, 0
    r = math.sqrt(disc)
    lo = max(x0, int(math.ceil(geo[j, 0] + (-bb - r) / a - 0.5 - 1e-3)))
    hi = min(x1, int(math.floor(geo[j, 0] + (-bb + r) / a - 0.5 + 1e-3)) + 1)
    return lo, hi


@njit(inline="always")
def _tile_box(t, width, height, tile):
    """Pixel box [x0, x1) x [y0, y1) of tile t (tiles numbered row by row), clipped to the image."""
    tiles_x = (width + tile - 1) // tile
    ty = t // tiles_x
    x0 = (t - ty * tiles_x) * tile
    y0 = ty * tile
    return x0, min(width, x0 + tile), y0, min(height, y0 + tile)


@njit(inline="always")
def _pixel_alpha(geo, j, px, y):
    """Gaussian j's alpha at pixel (px, row centre y); 0 where the skip test or ALPHA_MIN drops it.

    The two forward kernels share it; the backward evaluates inline because it also needs dx, dy and G.
    """
    dx = px + 0.5 - geo[j, 0]
    dy = y - geo[j, 1]
    power = -0.5 * (geo[j, 2] * dx * dx + geo[j, 4] * dy * dy) - geo[j, 3] * dx * dy
    if power > 0.0 or power < geo[j, 6]:
        return 0.0
    return min(ALPHA_MAX, geo[j, 5] * math.exp(power))


@njit(parallel=True, fastmath=True, cache=True)
def _forward(means2d, conics, opac, feats, offsets, ids, tile_order, width, height, tile, out, out_t, out_last):
    # Scanline order inside a tile: for each row, Gaussians front to back, each touching only the
    # pixels of its span. Every pixel still sees its Gaussians in depth order, so the result equals
    # the per-pixel loop of 3DGS, with far fewer evaluations.
    n_ch = feats.shape[1]
    for i in prange(tile_order.shape[0]):
        t = tile_order[i]
        x0, x1, y0, y1 = _tile_box(t, width, height, tile)
        start = offsets[t]
        geo, f = _gather_tile(means2d, conics, opac, feats, ids, start, offsets[t + 1])
        n = geo.shape[0]
        acc = np.empty((tile, n_ch), np.float32)
        trans = np.empty(tile, np.float64)
        last = np.empty(tile, np.int64)
        done = np.empty(tile, np.bool_)
        for py in range(y0, y1):
            y = py + 0.5
            acc[:] = 0.0
            trans[:] = 1.0
            last[:] = -1
            done[:] = False
            n_done = 0
            for j in range(n):
                if n_done == x1 - x0:
                    break
                lo, hi = _row_span(geo, j, y, x0, x1)
                for px in range(lo, hi):
                    q = px - x0
                    if done[q]:
                        continue
                    alpha = _pixel_alpha(geo, j, px, y)
                    if alpha < ALPHA_MIN:
                        continue
                    next_t = trans[q] * (1.0 - alpha)
                    if next_t <= T_MIN:
                        done[q] = True
                        n_done += 1
                        continue
                    w = np.float32(alpha * trans[q])
                    for c in range(n_ch):
                        acc[q, c] += w * f[j, c]
                    trans[q] = next_t
                    last[q] = j
            for px in range(x0, x1):
                q = px - x0
                for c in range(n_ch):
                    out[py, px, c] = acc[q, c]
                out_t[py, px] = trans[q]
                out_last[py, px] = start + last[q]


@njit(parallel=True, fastmath=True, cache=True)
def _median_forward(means2d, conics, opac, depths, offsets, ids, tile_order, width, height, tile, out):
    # Forward only: the depth of the Gaussian whose blending takes transmittance below 0.5, i.e. the first
    # surface a ray meets. Expected depth averages every layer a ray grazes, which fills a narrow crevice
    # (a ball resting in a bowl) with a meniscus of in-between depths.
    for i in prange(tile_order.shape[0]):
        t = tile_order[i]
        x0, x1, y0, y1 = _tile_box(t, width, height, tile)
        geo, f = _gather_tile(means2d, conics, opac, depths, ids, offsets[t], offsets[t + 1])
        n = geo.shape[0]
        trans = np.empty(tile, np.float64)
        for py in range(y0, y1):
            y = py + 0.5
            trans[:] = 1.0
            for px in range(x0, x1):
                out[py, px] = 0.0
            n_done = 0
            for j in range(n):
                if n_done == x1 - x0:
                    break
                lo, hi = _row_span(geo, j, y, x0, x1)
                for px in range(lo, hi):
                    q = px - x0
                    if trans[q] < 0.5:
                        continue
                    alpha = _pixel_alpha(geo, j, px, y)
                    if alpha < ALPHA_MIN:
                        continue
                    trans[q] *= 1.0 - alpha
                    if trans[q] < 0.5:
                        out[py, px] = f[j, 0]
                        n_done += 1


@njit(parallel=True, fastmath=True, cache=True)
def _backward(
    means2d, conics, opac, feats, offsets, ids, tile_order, width, height, tile, final_t, last_idx,
    g_out, g_alpha, pg_feat, pg_geom,
):
    # Same scanline order, back to front: each pixel revisits exactly the Gaussians it composited.
    # pg_geom columns: d mean x, d mean y, d conic a, d conic b, d conic c, d opacity
    n_ch = feats.shape[1]
    for i in prange(tile_order.shape[0]):
        t = tile_order[i]
        x0, x1, y0, y1 = _tile_box(t, width, height, tile)
        start = offsets[t]
        geo, f = _gather_tile(means2d, conics, opac, feats, ids, start, offsets[t + 1])
        suffix = np.empty((tile, n_ch), np.float64)
        trans = np.empty(tile, np.float64)
        last = np.empty(tile, np.int64)
        for py in range(y0, y1):
            y = py + 0.5
            suffix[:] = 0.0
            j_max = -1
            for px in range(x0, x1):
                q = px - x0
                trans[q] = final_t[py, px]
                last[q] = last_idx[py, px] - start
                j_max = max(j_max, last[q])
            for j in range(j_max, -1, -1):
                lo, hi = _row_span(geo, j, y, x0, x1)
                k = start + j
                for px in range(lo, hi):
                    q = px - x0
                    if j > last[q]:
                        continue
                    dx = px + 0.5 - geo[j, 0]
                    dy = y - geo[j, 1]
                    power = -0.5 * (geo[j, 2] * dx * dx + geo[j, 4] * dy * dy) - geo[j, 3] * dx * dy
                    if power > 0.0 or power < geo[j, 6]:
                        continue
                    gauss = math.exp(power)
                    raw = geo[j, 5] * gauss
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    one_minus = 1.0 - alpha
                    trans[q] = trans[q] / one_minus
                    w = alpha * trans[q]
                    inv = 1.0 / one_minus
                    d_alpha = g_alpha[py, px] * final_t[py, px] * inv
                    for c in range(n_ch):
                        go = g_out[py, px, c]
                        fc = f[j, c]
                        pg_feat[k, c] += w * go
                        d_alpha += go * (fc * trans[q] - suffix[q, c] * inv)
                        suffix[q, c] += w * fc
                    if raw <= ALPHA_MAX:
                        d_power = d_alpha * alpha
                        pg_geom[k, 0] += d_power * (geo[j, 2] * dx + geo[j, 3] * dy)
                        pg_geom[k, 1] += d_power * (geo[j, 3] * dx + geo[j, 4] * dy)
                        pg_geom[k, 2] += -0.5 * d_power * dx * dx
                        pg_geom[k, 3] += -d_power * dx * dy
                        pg_geom[k, 4] += -0.5 * d_power * dy * dy
                        pg_geom[k, 5] += d_alpha * gauss


@njit(cache=True)
def _reduce_pairs(ids, pg_feat, pg_geom, g_feat, g_geom):
    for k in range(ids.shape[0]):
        g = ids[k]
        for c in range(pg_feat.shape[1]):
            g_feat[g, c] += pg_feat[k, c]
        for c in range(pg_geom.shape[1]):
            g_geom[g, c] += pg_geom[k, c]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().cpu().numpy()


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, radii, depths, width, height):
        m, con, o, f = _np(means2d), _np(conics), _np(opacities), _np(features)
        order = np.argsort(_np(depths), kind="stable").astype(np.int64)
        offsets, ids = _bin_gaussians(m, _np(radii).astype(np.int64), order, width, height, TILE)
        tile_order = _balanced_tile_order(offsets.shape[0] - 1, numba.get_num_threads())
        out = np.empty((height, width, f.shape[1]), np.float32)
        out_t = np.empty((height, width), np.float64)
        out_last = np.empty((height, width), np.int64)
        _forward(m, con, o, f, offsets, ids, tile_order, width, height, TILE, out, out_t, out_last)
        ctx.saved = (m, con, o, f, offsets, ids, tile_order, out_t, out_last, width, height)
        ctx.dtype = features.dtype
        alpha = torch.from_numpy((1.0 - out_t).astype(np.float32))
        return torch.from_numpy(out), alpha

    @staticmethod
    def backward(ctx, g_out, g_alpha):
        m, con, o, f, offsets, ids, tile_order, out_t, out_last, width, height = ctx.saved
        pg_feat = np.zeros((ids.shape[0], f.shape[1]), np.float64)
        pg_geom = np.zeros((ids.shape[0], 6), np.float64)
        _backward(
            m, con, o, f, offsets, ids, tile_order, width, height, TILE, out_t, out_last,
            _np(g_out).astype(np.float64), _np(g_alpha).astype(np.float64), pg_feat, pg_geom,
        )
        g_feat = np.zeros(f.shape, np.float64)
        g_geom = np.zeros((f.shape[0], 6), np.float64)
        _reduce_pairs(ids, pg_feat, pg_geom, g_feat, g_geom)
        geom = torch.from_numpy(g_geom).to(ctx.dtype)
        return (
            geom[:, 0:2], geom[:, 2:5], geom[:, 5], torch.from_numpy(g_feat).to(ctx.dtype),
            None, None, None, None,
        )


def composite_cpu(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians front to back: features (H, W, C) and alpha (H, W)."""
    return _CompositeCPU.apply(means2d, conics, opacities, features, radii, depths, width, height)


def median_depth_cpu(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
) -> torch.Tensor:
    """Median depth (H, W): camera z where transmittance crosses 0.5, 0 where it never does. No gradient."""
    m, con, o = _np(means2d), _np(conics), _np(opacities)
    d = _np(depths).astype(np.float32).reshape(-1, 1)
    order = np.argsort(d[:, 0], kind="stable").astype(np.int64)
    offsets, ids = _bin_gaussians(m, _np(radii).astype(np.int64), order, width, height, TILE)
    tile_order = _balanced_tile_order(offsets.shape[0] - 1, numba.get_num_threads())
    out = np.empty((height, width), np.float32)
    _median_forward(m, con, o, d, offsets, ids, tile_order, width, height, TILE, out)
    return torch.from_numpy(out)
