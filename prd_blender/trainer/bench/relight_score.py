"""How a relit image is scored against the ground truth: one function for the relighting benchmark, its
ceiling and the mesh benchmark's Cycles comparison.

Light and albedo are only known up to a scale, so a per-channel scale is applied to the linear render, the
scaled image goes through the display transform (clip, sRGB) and is compared with the ground truth's display
image over the object mask.

**How the scale is chosen** (``fit="display"``, since relighting run 8): per channel, the scale that
minimises the very error the PSNR reports, the display-space one. Runs 1-7 fitted it by least squares in
linear over every object pixel (``fit="all"``). A sun's highlight on a metal reaches 10-100 in linear, in
the ground truth or in the render, and the display shows it as white whatever its value; fitted in linear,
those few pixels set the scale for the whole image. With ground-truth inputs under the sunny ``quarry_01``
HDRI, that fit scaled the glossy object by 1.29 and scored 19.6 dB, where the unscaled image scores 25.1 dB
(docs/benchmarks.md, relighting run 8).
"""

from __future__ import annotations

import numpy as np
import torch

from ..shading.shade import linear_to_srgb
from .relight_data import psnr, scale_fit

FITS = ("display", "all")

_GRID = 2.0 ** np.linspace(-10, 10, 201)  # scales tried first, in steps of 2^0.1, around the linear fit


def _display_error(pred: np.ndarray, target: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Mean squared display-space error of ``pred * s`` against ``target`` (N,) for each s of ``scales`` (K,)."""
    x = torch.from_numpy(np.clip(scales[:, None] * pred[None, :], 0.0, 1.0))
    return ((linear_to_srgb(x).numpy() - target[None, :]) ** 2).mean(1)


def display_scale_fit(pred: np.ndarray, gt_display: np.ndarray, mask: np.ndarray,
                      start: np.ndarray | None = None) -> np.ndarray:
    """Per-channel scale (C,) minimising the mean squared error of ``srgb(clip(s * pred))`` against
    ``gt_display`` over ``mask``: a grid of scales in steps of 2^0.1 around ``start`` (default 1), then golden-
    section search in log scale inside the best grid cell."""
    m = np.asarray(mask) > 0.5
    p, d = np.asarray(pred, np.float64)[m], np.asarray(gt_display, np.float64)[m]
    c0 = np.ones(p.shape[-1]) if start is None else np.asarray(start, np.float64)
    out = np.ones(p.shape[-1])
    for c in range(p.shape[-1]):
        if not np.any(p[:, c] > 0):
            continue
        centre = c0[c] if np.isfinite(c0[c]) and c0[c] > 0 else 1.0
        grid = centre * _GRID
        i = int(np.argmin(_display_error(p[:, c], d[:, c], grid)))
        lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
        for _ in range(24):  # the bracket shrinks to 0.618^24 of 2^0.2: far below a display quantum
            a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
            ea, eb = _display_error(p[:, c], d[:, c], np.exp([a, b]))
            if ea < eb:
                hi = b
            else:
                lo = a
        out[c] = float(np.exp(0.5 * (lo + hi)))
    return out


def relight_psnr(phy: np.ndarray, gt_linear: np.ndarray, gt_display: np.ndarray, mask: np.ndarray,
                 fit: str = "display") -> float:
    """PSNR (dB) of a linear render ``phy`` (H, W, 3) against the ground truth's linear and display images
    (H, W, >= 3) over ``mask``, after the per-channel scale fit named by ``fit`` (see the module)."""
    if fit not in FITS:
        raise ValueError(f"unknown scale fit {fit!r}; expected one of {', '.join(FITS)}")
    m = np.asarray(mask) > 0.5
    s = scale_fit(phy, gt_linear[..., :3], m)
    if fit == "display":
        s = display_scale_fit(phy, gt_display[..., :3], m, start=s)
    pred = linear_to_srgb(torch.from_numpy(np.clip(np.asarray(phy, np.float64) * s, 0, 1))).numpy()
    return psnr(pred, gt_display[..., :3], m)
