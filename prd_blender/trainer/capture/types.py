"""In-memory form of a capture: posed, undistorted pinhole views. Every loader produces this."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class CaptureError(ValueError):
    """A capture that cannot be used, with a message written for the user."""


@dataclass
class View:
    """One posed image.

    ``image`` is float32 (H, W, 3) in [0, 1] in the file's own display space (sRGB-encoded for 8-bit
    files), already composited over the capture's background colour when the file had alpha.
    ``mask`` is the file's alpha (H, W) float32, or None when the file had none.
    ``K`` is the 3x3 pinhole intrinsic matrix in pixels, pixel centres at (i + 0.5, j + 0.5).
    ``world_to_cam`` is 4x4 float64 in the OpenCV convention (x right, y down, z forward).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None
    K: np.ndarray
    world_to_cam: np.ndarray
    path: Path | None = None

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def cam_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_cam)

    @property
    def center(self) -> np.ndarray:
        return self.cam_to_world[:3, 3]


@dataclass
class Capture:
    """All views of one capture, plus sparse points when the source had them (COLMAP)."""

    views: list[View]
    source: str
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    points: np.ndarray | None = None  # (P, 3) float32, world space
    point_colors: np.ndarray | None = None  # (P, 3) float32 in [0, 1]
    meta: dict = field(default_factory=dict)

    def split(self, hold_out_every: int) -> tuple[list[View], list[View]]:
        """Train/test split holding out every n-th view (n <= 0: no test views)."""
        if hold_out_every <= 0:
            return list(self.views), []
        train = [v for i, v in enumerate(self.views) if i % hold_out_every != 0]
        test = [v for i, v in enumerate(self.views) if i % hold_out_every == 0]
        return train, test

