"""Radial-tangential (OpenCV / COLMAP) lens distortion and resampling to a pinhole image.

All capture formats we accept describe distortion with the same polynomial (COLMAP's SIMPLE_RADIAL,
RADIAL and OPENCV models are special cases of OpenCV's k1 k2 p1 p2 k3), so one implementation serves
every loader. Coefficients are always handled as a length-5 array ``(k1, k2, p1, p2, k3)``.

Pixel convention (as everywhere in ``capture``): pixel (row i, column j) has its centre at
(u, v) = (j + 0.5, i + 0.5), which is also COLMAP's convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIST_NAMES = ("k1", "k2", "p1", "p2", "k3")


def as_coeffs(
    k1: float = 0.0, k2: float = 0.0, p1: float = 0.0, p2: float = 0.0, k3: float = 0.0
) -> np.ndarray:
    """Pack coefficients in the canonical order ``(k1, k2, p1, p2, k3)``."""
    return np.array([k1, k2, p1, p2, k3], dtype=np.float64)


def is_pinhole(coeffs: np.ndarray | None) -> bool:
    """True when the coefficients describe no distortion at all."""
    return coeffs is None or not np.any(np.asarray(coeffs) != 0.0)


def distort_points(xy: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Forward model: ideal normalised coordinates (..., 2) -> distorted normalised coordinates."""
    k1, k2, p1, p2, k3 = (float(c) for c in coeffs)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def undistort_points(xy_d: np.ndarray, coeffs: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Inverse of :func:`distort_points` by Newton's method (the model has no closed-form inverse).

    Newton rather than OpenCV's fixed-point iteration because it also converges towards the image
    corners of strongly distorted lenses, where the fixed point iteration oscillates.
    """
    k1, k2, p1, p2, k3 = (float(c) for c in coeffs)
    xy_d = np.asarray(xy_d, dtype=np.float64)
    x, y = xy_d[..., 0].copy(), xy_d[..., 1].copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dradial = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)  # d radial / d r2
        fx = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x) - xy_d[..., 0]
        fy = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y - xy_d[..., 1]
        j00 = radial + 2.0 * x * x * dradial + 2.0 * p1 * y + 6.0 * p2 * x
        j01 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
        j10 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
        j11 = radial + 2.0 * y * y * dradial + 6.0 * p1 * y + 2.0 * p2 * x
        det = j00 * j11 - j01 * j10
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        dx = (j11 * fx - j01 * fy) / det
        dy = (j00 * fy - j10 * fx) / det
        x -= dx
        y -= dy
        if max(float(np.max(np.abs(dx), initial=0.0)), float(np.max(np.abs(dy), initial=0.0))) < 1e-12:
            break
    return np.stack([x, y], axis=-1)


@dataclass(frozen=True)
class SampleMap:
    """Precomputed bilinear taps: output pixel -> 4 source pixels and weights (shared by all images
    of one camera, which is why it is a separate object)."""

    y0: np.ndarray
    x0: np.ndarray
    y1: np.ndarray
    x1: np.ndarray
    wy: np.ndarray
    wx: np.ndarray
    outside_fraction: float  # share of output pixels whose source lies off the sensor


def undistort_map(width: int, height: int, K: np.ndarray, coeffs: np.ndarray) -> SampleMap:
    """Sampling map that turns a distorted (width x height) image into the pinhole image with the same K.

    For each output pixel centre: normalise with K, apply the forward distortion, map back to pixels
    with K, then sample there. Sources off the sensor are clamped to the border (replicating edge
    pixels) rather than filled with black, which a trainer would otherwise try to reproduce.
    """
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    u = (np.arange(width, dtype=np.float64) + 0.5 - cx) / fx
    v = (np.arange(height, dtype=np.float64) + 0.5 - cy) / fy
    xy = np.stack(np.meshgrid(u, v, indexing="xy"), axis=-1)
    xy_d = distort_points(xy, coeffs)
    # back to continuous pixel coords, then to array index space (centres at integers)
    sx = xy_d[..., 0] * fx + cx - 0.5
    sy = xy_d[..., 1] * fy + cy - 0.5
    outside = (sx < -0.5) | (sx > width - 0.5) | (sy < -0.5) | (sy > height - 0.5)
    sx = np.clip(sx, 0.0, width - 1.0)
    sy = np.clip(sy, 0.0, height - 1.0)
    x0 = np.floor(sx).astype(np.int32)
    y0 = np.floor(sy).astype(np.int32)
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    return SampleMap(
        y0=y0,
        x0=x0,
        y1=y1,
        x1=x1,
        wy=(sy - y0).astype(np.float32)[..., None],
        wx=(sx - x0).astype(np.float32)[..., None],
        outside_fraction=float(outside.mean()),
    )


def remap(image: np.ndarray, smap: SampleMap) -> np.ndarray:
    """Bilinear resampling of an (H, W, C) float image through a :class:`SampleMap`."""
    top = image[smap.y0, smap.x0] * (1.0 - smap.wx) + image[smap.y0, smap.x1] * smap.wx
    bottom = image[smap.y1, smap.x0] * (1.0 - smap.wx) + image[smap.y1, smap.x1] * smap.wx
    return (top * (1.0 - smap.wy) + bottom * smap.wy).astype(np.float32, copy=False)


def undistort_image(image: np.ndarray, K: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Undistort one (H, W) or (H, W, C) float image to the pinhole model with the same K."""
    squeeze = image.ndim == 2
    img = image[..., None] if squeeze else image
    out = remap(img, undistort_map(img.shape[1], img.shape[0], K, coeffs))
    return out[..., 0] if squeeze else out
