"""Loader for ``transforms*.json`` captures: NeRF Synthetic (Blender) and nerfstudio / instant-ngp.

Two forms, told apart by the focal length keys:
- NeRF Synthetic: ``camera_angle_x`` (horizontal field of view, radians), optional ``camera_angle_y``;
  principal point at the image centre.
- nerfstudio / instant-ngp: ``fl_x fl_y cx cy w h`` plus optional OpenCV distortion ``k1 k2 p1 p2 k3``,
  at top level and/or per frame (per-frame keys override top-level ones).
``transform_matrix`` is camera-to-world with OpenGL/Blender camera axes (x right, y up, looking down
-z); we flip the camera's y and z axes to get OpenCV axes, then invert to world-to-camera.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .assemble import ViewSpec, build_views, check_intrinsics, check_rigid
from .distortion import as_coeffs, is_pinhole
from .images import IMAGE_EXTENSIONS, probe_image
from .types import Capture, CaptureError

# keys that describe a camera; any of them inside a frame makes that frame's intrinsics its own
INTRINSIC_KEYS = (
    "camera_angle_x",
    "camera_angle_y",
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "w",
    "h",
    "k1",
    "k2",
    "k3",
    "k4",
    "p1",
    "p2",
    "camera_model",
)
_PERSPECTIVE_MODELS = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE"}

# OpenGL camera axes -> OpenCV camera axes (applied on the camera side of cam_to_world)
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def gl_cam_to_world_to_cv_world_to_cam(transform_matrix: np.ndarray) -> np.ndarray:
    """NeRF/Blender camera-to-world (OpenGL axes) -> world-to-camera (OpenCV axes)."""
    c2w_cv = np.asarray(transform_matrix, dtype=np.float64) @ GL_TO_CV
    rot, t = c2w_cv[:3, :3], c2w_cv[:3, 3]
    w2c = np.eye(4)
    w2c[:3, :3] = rot.T  # rigid inverse: exact and cheaper than a general inverse
    w2c[:3, 3] = -rot.T @ t
    return w2c


def resolve_image_path(base: Path, file_path: str) -> Path | None:
    """``file_path`` relative to the json folder; NeRF Synthetic omits the extension, so try common ones."""
    candidate = base / file_path
    if candidate.is_file():
        return candidate
    for ext in IMAGE_EXTENSIONS:
        with_ext = candidate.with_name(candidate.name + ext)
        if with_ext.is_file():
            return with_ext
    return None


def read_transforms_json(json_path: Path) -> dict:
    """Parse and minimally validate the json (a dict with a non-empty ``frames`` list)."""
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CaptureError(f"Capture file not found: {json_path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(f"Cannot read {json_path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptureError(
            f"{json_path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from exc
    if not isinstance(data, dict):
        raise CaptureError(f"{json_path}: expected a JSON object with a 'frames' list at the top level.")
    if "frames" not in data:
        raise CaptureError(
            f"{json_path}: no 'frames' list; this does not look like a transforms.json capture."
        )
    frames = data["frames"]
    if not isinstance(frames, list):
        raise CaptureError(f"{json_path}: 'frames' must be a list, got {type(frames).__name__}.")
    if not frames:
        raise CaptureError(f"{json_path}: 'frames' is empty; the capture has no images.")
    return data


def _number(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CaptureError(f"{where}: '{key}' must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise CaptureError(f"{where}: '{key}' is not finite ({value}).")
    return float(value)


def _intrinsics(intr: dict, width: int, height: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """K and distortion for one frame's merged intrinsic keys, for an image of width x height."""
    model = intr.get("camera_model")
    if model is not None and str(model).upper() not in _PERSPECTIVE_MODELS:
        raise CaptureError(
            f"{where}: camera_model {model!r} is not supported (only perspective OPENCV/PINHOLE cameras). "
            "Undistort the images to a pinhole camera first (e.g. colmap image_undistorter) and load "
            "the result."
        )
    nums = {k: _number(intr[k], k, where) for k in INTRINSIC_KEYS if k in intr and k != "camera_model"}
    if "fl_x" in nums:
        fx = nums["fl_x"]
    elif "camera_angle_x" in nums:
        angle = nums["camera_angle_x"]
        if not 0.0 < angle < math.pi:
            raise CaptureError(f"{where}: camera_angle_x must be between 0 and pi radians, got {angle}.")
        fx = 0.5 * width / math.tan(0.5 * angle)
    else:
        raise CaptureError(f"{where}: no focal length; expected 'camera_angle_x' or 'fl_x'.")
    if "fl_y" in nums:
        fy = nums["fl_y"]
    elif "camera_angle_y" in nums and "fl_x" not in nums:
        angle = nums["camera_angle_y"]
        if not 0.0 < angle < math.pi:
            raise CaptureError(f"{where}: camera_angle_y must be between 0 and pi radians, got {angle}.")
        fy = 0.5 * height / math.tan(0.5 * angle)
    else:
        fy = fx  # square pixels
    K = check_intrinsics(fx, fy, nums.get("cx", width / 2.0), nums.get("cy", height / 2.0), where)
    if nums.get("k4", 0.0) != 0.0:
        # nerfstudio only uses k4 for fisheye lenses; OpenCV's k4 is a rational-model term we do not model
        raise CaptureError(
            f"{where}: distortion coefficient k4 is not supported (fisheye or rational lens model)."
        )
    coeffs = as_coeffs(*(nums.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3")))
    return K, (None if is_pinhole(coeffs) else coeffs)


def load_transforms(
    json_path: str | Path,
    *,
    resolution: int | None = None,
    downscale: float | None = None,
    background: tuple[float, float, float] | None = None,
) -> Capture:
    """Load a NeRF Synthetic or nerfstudio/instant-ngp ``transforms*.json`` capture."""
    json_path = Path(json_path)
    data = read_transforms_json(json_path)
    base = json_path.parent
    frames = data["frames"]
    top = {k: data[k] for k in INTRINSIC_KEYS if k in data}
    nerfstudio = "fl_x" in top or any(isinstance(f, dict) and "fl_x" in f for f in frames)

    specs: list[ViewSpec] = []
    groups: dict[str, tuple[str, tuple[int, int]]] = {}  # shared intrinsic set -> (first image, size)
    any_alpha = False
    rotated: list[str] = []
    for i, frame in enumerate(frames):
        where = f"{json_path}, frame {i}"
        if not isinstance(frame, dict):
            raise CaptureError(f"{where}: expected an object, got {type(frame).__name__}.")
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise CaptureError(f"{where}: missing 'file_path'.")
        where = f"{json_path}, frame {i} ({file_path})"
        if "transform_matrix" not in frame:
            raise CaptureError(f"{where}: missing 'transform_matrix'.")
        try:
            matrix = np.array(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CaptureError(f"{where}: 'transform_matrix' is not a 4x4 list of numbers.") from exc
        c2w = check_rigid(matrix, f"{where}: transform_matrix")

        image_path = resolve_image_path(base, file_path)
        if image_path is None:
            tried = ", ".join(["(as is)", *IMAGE_EXTENSIONS[:3]])
            raise CaptureError(f"{where}: image file not found: {base / file_path} (tried {tried}).")
        info = probe_image(image_path)
        any_alpha |= info.has_alpha
        if info.exif_orientation != 1:
            rotated.append(file_path)

        intr = {**top, **{k: frame[k] for k in INTRINSIC_KEYS if k in frame}}
        size = (info.width, info.height)
        if "w" in intr or "h" in intr:
            expected = (
                int(_number(intr.get("w", info.width), "w", where)),
                int(_number(intr.get("h", info.height), "h", where)),
            )
            if expected != size:
                hint = " (the file has a rotated EXIF orientation)" if info.exif_orientation >= 5 else ""
                raise CaptureError(
                    f"{where}: image {image_path} is {size[0]}x{size[1]} but the json says "
                    f"w={expected[0]}, h={expected[1]}{hint}. Point the json at images of the size it "
                    "describes."
                )
        # frames sharing one set of intrinsics must share the image size, or one K would be wrong
        key = json.dumps(intr, sort_keys=True, default=str)
        first = groups.setdefault(key, (str(image_path), size))
        if first[1] != size:
            raise CaptureError(
                f"{where}: image {image_path} is {size[0]}x{size[1]} but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}, and both use the same camera intrinsics in {json_path.name}."
            )
        K, coeffs = _intrinsics(intr, info.width, info.height, where)
        name = image_path.relative_to(base).as_posix() if image_path.is_relative_to(base) else str(image_path)
        specs.append(
            ViewSpec(
                name=name,
                path=image_path,
                size=size,
                K=K,
                world_to_cam=gl_cam_to_world_to_cv_world_to_cam(c2w),
                coeffs=coeffs,
            )
        )

    if background is None:
        white = any_alpha and not nerfstudio
        if isinstance(data.get("white_background"), bool):
            white = data["white_background"]
        background = (1.0, 1.0, 1.0) if white else (0.0, 0.0, 0.0)
    background = tuple(float(c) for c in background)

    meta: dict = {"path": str(json_path), "format": "transforms"}
    if rotated:
        meta["exif_orientation_ignored"] = rotated
    views = build_views(specs, resolution=resolution, downscale=downscale, background=background, meta=meta)
    return Capture(
        views=views,
        source="nerfstudio" if nerfstudio else "nerf_synthetic",
        background=background,
        meta=meta,
    )
