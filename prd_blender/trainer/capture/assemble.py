"""Shared last step of every loader: turn validated view descriptions into :class:`View` objects.

Order of operations per image (all in float32):
read -> premultiply by alpha -> undistort (at the file's resolution, where K and the distortion
coefficients are defined) -> area-downscale -> composite over the background.
Premultiplying before any resampling is what keeps transparent edges free of dark or white fringes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .distortion import SampleMap, is_pinhole, remap, undistort_map
from .images import area_resize, output_size, read_image_array, scale_intrinsics
from .types import CaptureError, View


@dataclass
class ViewSpec:
    """A view before its pixels are loaded; K and coeffs refer to the file's own pixel grid."""

    name: str
    path: Path
    size: tuple[int, int]  # (width, height) of the file, as probed
    K: np.ndarray
    world_to_cam: np.ndarray
    coeffs: np.ndarray | None = None  # (k1, k2, p1, p2, k3) or None for a pinhole camera


def check_intrinsics(fx: float, fy: float, cx: float, cy: float, where: str) -> np.ndarray:
    """K from focal lengths and principal point, refusing NaN/inf and non-positive focal lengths."""
    vals = np.array([fx, fy, cx, cy], dtype=np.float64)
    if not np.all(np.isfinite(vals)):
        raise CaptureError(f"{where}: intrinsics are not finite (fx={fx}, fy={fy}, cx={cx}, cy={cy}).")
    if fx <= 0 or fy <= 0:
        raise CaptureError(f"{where}: focal lengths must be positive (fx={fx}, fy={fy}).")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def check_rigid(matrix: np.ndarray, where: str) -> np.ndarray:
    """Validate a 4x4 rigid transform (finite, orthonormal rotation, det +1, last row 0 0 0 1)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise CaptureError(f"{where}: expected a 4x4 matrix, got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise CaptureError(f"{where}: pose contains NaN or infinite values.")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise CaptureError(f"{where}: last row of the pose must be [0, 0, 0, 1], got {m[3].tolist()}.")
    rot = m[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise CaptureError(
            f"{where}: the rotation part of the pose is not a proper rotation "
            "(scaled, sheared or mirrored camera matrices are not supported)."
        )
    return m


def build_views(
    specs: list[ViewSpec],
    *,
    resolution: int | None,
    downscale: float | None,
    background: tuple[float, float, float],
    meta: dict,
) -> list[View]:
    """Load, undistort, downscale and composite every view (threaded: Pillow and numpy release the GIL)."""
    if not specs:
        raise CaptureError("The capture contains no images.")
    bg = np.asarray(background, dtype=np.float32)

    # one sampling map per distinct camera, built up front so threads only read them
    maps: dict[tuple, SampleMap] = {}
    for spec in specs:
        if not is_pinhole(spec.coeffs):
            key = _map_key(spec)
            if key not in maps:
                maps[key] = undistort_map(spec.size[0], spec.size[1], spec.K, spec.coeffs)

    def load(spec: ViewSpec) -> View:
        stack = read_image_array(spec.path)
        h, w = stack.shape[:2]
        if (w, h) != spec.size:  # header and pixels disagree: the file is damaged or changed meanwhile
            raise CaptureError(f"{spec.path}: decoded size {w}x{h} differs from its header {spec.size}.")
        has_alpha = stack.shape[2] == 4
        if has_alpha:
            stack[..., :3] *= stack[..., 3:]  # premultiply in place
        if not is_pinhole(spec.coeffs):
            stack = remap(stack, maps[_map_key(spec)])
        new_size = output_size(w, h, resolution, downscale)
        if new_size != (w, h):
            stack = area_resize(stack, *new_size)
        K = scale_intrinsics(spec.K, (w, h), new_size)
        if has_alpha:
            a = np.clip(stack[..., 3], 0.0, 1.0)
            image = stack[..., :3] + (1.0 - a)[..., None] * bg
            mask = np.ascontiguousarray(a, dtype=np.float32)
        else:
            image, mask = stack, None
        image = np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)
        return View(
            name=spec.name, image=image, mask=mask, K=K, world_to_cam=spec.world_to_cam.copy(), path=spec.path
        )

    workers = max(1, min(8, os.cpu_count() or 1, len(specs)))
    if workers == 1:
        views = [load(s) for s in specs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            views = list(pool.map(load, specs))

    meta["undistorted"] = bool(maps)
    if maps:
        # where the lens saw less than the pinhole frame, edge pixels were replicated
        meta["undistort_outside_fraction"] = max(m.outside_fraction for m in maps.values())
    meta["resolution"] = resolution
    meta["downscale"] = downscale
    return views


def _map_key(spec: ViewSpec) -> tuple:
    return (spec.size, spec.K.tobytes(), np.asarray(spec.coeffs, dtype=np.float64).tobytes())
