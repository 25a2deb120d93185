"""Capture loaders: turn a transforms.json or a COLMAP model into a :class:`Capture` of pinhole views.

Never imports bpy (nor torch): the Blender side may use it too.
"""

from __future__ import annotations

import math
from pathlib import Path

from .colmap import MODEL_FILES, find_model_dir, load_colmap
from .transforms import load_transforms
from .types import Capture, CaptureError, View

__all__ = ["Capture", "CaptureError", "View", "ACCEPTED_FORMATS", "find_capture", "load_capture"]

ACCEPTED_FORMATS = (
    "Accepted captures: a transforms*.json file (NeRF Synthetic, nerfstudio or instant-ngp); a folder "
    "containing transforms.json or transforms_<split>.json; a COLMAP sparse model folder (cameras, images "
    "and points3D as .bin or .txt); or a project folder with sparse/0/ or sparse/ plus images/."
)


def find_capture(path: str | Path, split: str = "train") -> tuple[str, Path]:
    """Detect the format of ``path``: ("transforms", json file) or ("colmap", model folder)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CaptureError(f"{p} does not exist. {ACCEPTED_FORMATS}")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "transforms", p
        if p.stem in MODEL_FILES and p.suffix in (".bin", ".txt"):
            return "colmap", p.parent
        raise CaptureError(f"{p} is not a capture file. {ACCEPTED_FORMATS}")

    # a folder: transforms first (nerfstudio folders also carry a colmap/ model, the json is the result)
    for name in ("transforms.json", f"transforms_{split}.json"):
        if (p / name).is_file():
            return "transforms", p / name
    others = sorted(q.name for q in p.glob("transforms*.json"))
    model_dir = find_model_dir(p)
    if model_dir is not None:
        return "colmap", model_dir
    if others:
        raise CaptureError(
            f"{p} has no transforms.json or transforms_{split}.json, only {', '.join(others)}: "
            "choose the split or pass the json file itself."
        )
    from ..sfm import is_photo_folder  # late: sfm imports capture

    if is_photo_folder(p):
        raise CaptureError(
            f"{p} is a folder of photos without camera poses. Compute them first with `prd poses {p} --out DIR` "
            "and load DIR, or give the folder to `prd train`, which does both."
        )
    raise CaptureError(f"No capture found in {p}. {ACCEPTED_FORMATS}")


def load_capture(
    path: str | Path,
    *,
    resolution: int | None = None,
    downscale: float | None = None,
    background: tuple[float, float, float] | None = None,
    split: str = "train",
    image_dir: str | Path | None = None,
) -> Capture:
    """Load any supported capture as undistorted pinhole views (see :data:`ACCEPTED_FORMATS`).

    resolution: cap on the longer image side in pixels (smaller images are kept as they are).
    downscale: divide both image sides by this factor (>= 1, need not be an integer).
    background: colour that transparent pixels are composited over; default white for RGBA
        NeRF Synthetic captures, black otherwise.
    split: which transforms_<split>.json to use in a folder without transforms.json.
    image_dir: image folder of a COLMAP model, when it is not an ``images/`` folder nearby.
    """
    if resolution is not None and downscale is not None:
        raise CaptureError("Give either resolution or downscale, not both.")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
    ):
        raise CaptureError(f"resolution must be a positive whole number of pixels, got {resolution!r}.")
    if downscale is not None and not (math.isfinite(downscale) and downscale >= 1.0):
        raise CaptureError(
            f"downscale must be a finite factor >= 1 (images are never enlarged), got {downscale!r}."
        )
    if background is not None:
        if len(background) != 3 or not all(math.isfinite(float(c)) for c in background):
            raise CaptureError(f"background must be three finite numbers (r, g, b), got {background!r}.")
        background = (float(background[0]), float(background[1]), float(background[2]))

    kind, where = find_capture(path, split)
    if kind == "transforms":
        return load_transforms(where, resolution=resolution, downscale=downscale, background=background)
    return load_colmap(
        where, image_dir=image_dir, resolution=resolution, downscale=downscale, background=background
    )
