"""How a relit image is scored against the ground truth: one function for the relighting benchmark, its
ceiling and the mesh benchmark's Cycles comparison.

Light and albedo are only known up to a scale, so a per-channel scale is fitted in linear, then the scaled
image goes through the display transform (clip, sRGB) and is compared with the ground truth's display image
over the object mask.

**Which pixels the scale is fitted on.** Only those whose ground-truth channel is below 1 in linear, i.e.
not clipped by the display. A sun's highlight on a metal reaches 10-100 in linear; fitted on every pixel
(``fit="all"``, the benchmark's metric up to relighting run 7), those few pixels set the scale for the whole
image, although the display shows them as 1 whatever their value. With ground-truth inputs under the sunny
``quarry_01`` HDRI, that fit scaled the glossy object by 1.29 and scored 19.6 dB where the unscaled image
scores 25.1 dB (docs/benchmarks.md, relighting run 8).
"""

from __future__ import annotations

import numpy as np
import torch

from ..shading.shade import linear_to_srgb
from .relight_data import psnr, scale_fit

FITS = ("unclipped", "all")


def unclipped_scale_fit(pred: np.ndarray, gt_linear: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel least-squares scale (3,) over the masked pixels whose ground-truth channel is below 1;
    a channel with no such pixel is fitted on all masked pixels."""
    m = np.asarray(mask) > 0.5
    p, g = np.asarray(pred, np.float64)[m], np.asarray(gt_linear, np.float64)[m]
    s = np.ones(p.shape[-1])
    for c in range(p.shape[-1]):
        keep = g[:, c] < 1.0
        if not keep.any():
            keep = np.ones_like(keep)
        den = float(np.sum(p[keep, c] ** 2))
        if den > 0:
            s[c] = float(np.sum(p[keep, c] * g[keep, c])) / den
    return s


def relight_psnr(phy: np.ndarray, gt_linear: np.ndarray, gt_display: np.ndarray, mask: np.ndarray,
                 fit: str = "unclipped") -> float:
    """PSNR (dB) of a linear render ``phy`` (H, W, 3) against the ground truth's linear and display images
    (H, W, >= 3) over ``mask``, after the per-channel scale fit named by ``fit`` (see the module)."""
    if fit not in FITS:
        raise ValueError(f"unknown scale fit {fit!r}; expected one of {', '.join(FITS)}")
    lin = gt_linear[..., :3]
    m = np.asarray(mask) > 0.5
    s = unclipped_scale_fit(phy, lin, m) if fit == "unclipped" else scale_fit(phy, lin, m)
    pred = linear_to_srgb(torch.from_numpy(np.clip(np.asarray(phy, np.float64) * s, 0, 1))).numpy()
    return psnr(pred, gt_display[..., :3], m)
