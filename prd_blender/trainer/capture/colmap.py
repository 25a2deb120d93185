"""COLMAP sparse models (binary and text): reader, a small writer, and the capture loader.

COLMAP poses are world-to-camera in OpenCV axes with the quaternion stored w first
(QW QX QY QZ TX TY TZ), so they need no axis flip. Pixel centres sit at (i + 0.5), like ours.
Supported camera models: SIMPLE_PINHOLE, PINHOLE, and the radial-tangential ones SIMPLE_RADIAL,
RADIAL and OPENCV, which are undistorted to a pinhole with the same K. Anything else (fisheye,
FULL_OPENCV...) must go through ``colmap image_undistorter`` first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .assemble import ViewSpec, build_views, check_intrinsics
from .distortion import as_coeffs, is_pinhole
from .images import probe_image
from .types import Capture, CaptureError

# model id -> (name, number of params), as in COLMAP's sensor/models.h
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: (mid, n) for mid, (name, n) in CAMERA_MODELS.items()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # world-to-camera translation
    camera_id: int
    name: str

    def world_to_cam(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = qvec_to_rotmat(self.qvec)
        m[:3, 3] = self.tvec
        return m


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]
    points: np.ndarray | None  # (P, 3) float64
    colors: np.ndarray | None  # (P, 3) uint8
    binary: bool


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion; normalised first since files round values."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternion with w >= 0 of a rotation matrix (eigenvector method: robust everywhere)."""
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = np.asarray(R, dtype=np.float64)
    sym = (
        np.array(
            [
                [r00 - r11 - r22, 0.0, 0.0, 0.0],
                [r01 + r10, r11 - r00 - r22, 0.0, 0.0],
                [r02 + r20, r12 + r21, r22 - r00 - r11, 0.0],
                [r21 - r12, r02 - r20, r10 - r01, r00 + r11 + r22],
            ]
        )
        / 3.0
    )
    vals, vecs = np.linalg.eigh(sym)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    return -q if q[0] < 0 else q


# ----------------------------------------------------------------------------------------------- finding


def model_files(folder: Path) -> dict[str, Path] | None:
    """The model files of ``folder`` (binary preferred, like COLMAP), or None if it holds no model.

    cameras and images are required; points3D is optional (then the capture has no sparse points).
    A folder holding only part of a model raises, naming what is missing.
    """
    for ext in (".bin", ".txt"):
        present = {
            name: folder / f"{name}{ext}" for name in MODEL_FILES if (folder / f"{name}{ext}").is_file()
        }
        if "cameras" in present and "images" in present:
            return present
    found = sorted(
        p.name for ext in (".bin", ".txt") for n in MODEL_FILES if (p := folder / f"{n}{ext}").is_file()
    )
    if found:
        raise CaptureError(
            f"Incomplete COLMAP model in {folder}: found {', '.join(found)}, but a model needs cameras and "
            "images files of the same kind (cameras.bin + images.bin [+ points3D.bin], or the .txt trio)."
        )
    return None


def find_model_dir(folder: Path) -> Path | None:
    """A COLMAP model in ``folder``, ``folder/sparse/0``, ``folder/sparse`` or ``folder/sparse/<n>``."""
    candidates = [folder, folder / "sparse" / "0", folder / "sparse"]
    sparse = folder / "sparse"
    if sparse.is_dir():
        numbered = [p for p in sparse.iterdir() if p.is_dir() and p.name.isdigit()]
        candidates += sorted(numbered, key=lambda p: int(p.name))
    for cand in candidates:
        if cand.is_dir() and model_files(cand) is not None:
            return cand
    return None


# ----------------------------------------------------------------------------------------------- binary


class _Reader:
    """Bounds-checked little-endian reader that turns running off the end into a CaptureError."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def read(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise CaptureError(
                f"{self.path}: file is truncated ({len(self.data)} bytes) while reading {what}. "
                "Re-export the model from COLMAP."
            )
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals

    def skip(self, nbytes: int, what: str) -> None:
        if self.pos + nbytes > len(self.data):
            raise CaptureError(
                f"{self.path}: file is truncated ({len(self.data)} bytes) while reading {what}."
            )
        self.pos += nbytes

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise CaptureError(f"{self.path}: file is truncated while reading {what}.")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return raw.decode("utf-8", errors="replace")

    def finish(self, count: int) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise CaptureError(
                f"{self.path}: {extra} unexpected bytes after the {count} records the header announces "
                "(corrupt file, or not a COLMAP model)."
            )


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    (count,) = r.read("<Q", "the camera count")
    cameras = {}
    for i in range(count):
        cam_id, model_id, width, height = r.read("<IiQQ", f"camera {i + 1} of {count}")
        if model_id not in CAMERA_MODELS:
            raise CaptureError(f"{path}: camera {cam_id} has unknown camera model id {model_id}.")
        name, nparams = CAMERA_MODELS[model_id]
        params = r.read(f"<{nparams}d", f"the parameters of camera {cam_id}")
        cameras[cam_id] = ColmapCamera(cam_id, name, int(width), int(height), tuple(params))
    r.finish(count)
    return cameras


def _read_images_bin(path: Path) -> list[ColmapImage]:
    r = _Reader(path)
    (count,) = r.read("<Q", "the image count")
    images = []
    for i in range(count):
        vals = r.read("<I7dI", f"image {i + 1} of {count}")
        name = r.cstring(f"the name of image {vals[0]}")
        (npts,) = r.read("<Q", f"the keypoint count of image {name}")
        r.skip(24 * npts, f"the keypoints of image {name}")  # x, y (double), point3D id (int64)
        images.append(ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name))
    r.finish(count)
    return images


def _read_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(path)
    (count,) = r.read("<Q", "the point count")
    xyz = np.empty((count, 3), dtype=np.float64)
    rgb = np.empty((count, 3), dtype=np.uint8)
    for i in range(count):
        vals = r.read("<Q3d3BdQ", f"point {i + 1} of {count}")
        xyz[i] = vals[1:4]
        rgb[i] = vals[4:7]
        r.skip(8 * vals[8], f"the track of point {vals[0]}")  # (image id, point2D idx) uint32 pairs
    r.finish(count)
    return xyz, rgb


# ----------------------------------------------------------------------------------------------- text


def _data_lines(path: Path) -> list[tuple[int, str]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise CaptureError(f"Cannot read {path}: {exc}") from exc
    return [(n + 1, line) for n, line in enumerate(lines)]


def _parse(convert, text: str, path: Path, lineno: int, what: str):
    try:
        return convert(text)
    except ValueError as exc:
        raise CaptureError(f"{path}, line {lineno}: cannot parse {what} {text!r}.") from exc


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for lineno, line in _data_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        el = line.split()
        if len(el) < 4:
            raise CaptureError(f"{path}, line {lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[].")
        cam_id = _parse(int, el[0], path, lineno, "camera id")
        model = el[1]
        if model not in MODEL_IDS:
            raise CaptureError(f"{path}, line {lineno}: unknown camera model {model!r}.")
        nparams = MODEL_IDS[model][1]
        params = tuple(_parse(float, v, path, lineno, "parameter") for v in el[4:])
        if len(params) != nparams:
            raise CaptureError(
                f"{path}, line {lineno}: camera model {model} takes {nparams} parameters, got {len(params)}."
            )
        width = _parse(int, el[2], path, lineno, "width")
        height = _parse(int, el[3], path, lineno, "height")
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cameras


def _read_images_txt(path: Path) -> list[ColmapImage]:
    lines = _data_lines(path)
    images = []
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        i += 1
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        el = line.split()
        if len(el) < 10:
            raise CaptureError(
                f"{path}, line {lineno}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {line!r}."
            )
        nums = [_parse(float, v, path, lineno, "pose value") for v in el[1:8]]
        image_id = _parse(int, el[0], path, lineno, "image id")
        cam_id = _parse(int, el[8], path, lineno, "camera id")
        name = " ".join(el[9:])
        images.append(ColmapImage(image_id, np.array(nums[:4]), np.array(nums[4:7]), cam_id, name))
        i += 1  # the second line of each image (its keypoints) may be empty, so skip it unconditionally
    return images


def _read_points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for lineno, line in _data_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        el = line.split()
        if len(el) < 8:
            raise CaptureError(f"{path}, line {lineno}: expected POINT3D_ID X Y Z R G B ERROR TRACK[].")
        xyz.append([_parse(float, v, path, lineno, "coordinate") for v in el[1:4]])
        rgb.append([_parse(int, v, path, lineno, "colour") for v in el[4:7]])
    return np.array(xyz, dtype=np.float64).reshape(-1, 3), np.clip(np.array(rgb), 0, 255).astype(
        np.uint8
    ).reshape(-1, 3)


def read_model(model_dir: str | Path) -> ColmapModel:
    """Read a COLMAP sparse model folder (binary preferred when both kinds are present)."""
    model_dir = Path(model_dir)
    files = model_files(model_dir)
    if files is None:
        raise CaptureError(f"No COLMAP model (cameras/images/points3D .bin or .txt) in {model_dir}.")
    binary = files["cameras"].suffix == ".bin"
    if binary:
        cameras = _read_cameras_bin(files["cameras"])
        images = _read_images_bin(files["images"])
        points = _read_points_bin(files["points3D"]) if "points3D" in files else None
    else:
        cameras = _read_cameras_txt(files["cameras"])
        images = _read_images_txt(files["images"])
        points = _read_points_txt(files["points3D"]) if "points3D" in files else None
    xyz, rgb = points if points is not None else (None, None)
    return ColmapModel(cameras, images, xyz, rgb, binary)


# ----------------------------------------------------------------------------------------------- writer


def write_model(
    model_dir: str | Path,
    cameras: list[ColmapCamera],
    images: list[ColmapImage],
    points: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    *,
    binary: bool = True,
) -> None:
    """Write a COLMAP sparse model (no keypoints, empty tracks): lets cameras we know be handed to
    COLMAP-based tools, and gives the tests an independent way to build models."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    pts = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cols = (
        np.full((len(pts), 3), 128, np.uint8)
        if colors is None
        else np.asarray(colors, np.uint8).reshape(-1, 3)
    )
    if binary:
        with open(model_dir / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(cameras)))
            for c in cameras:
                mid, n = MODEL_IDS[c.model]
                f.write(struct.pack(f"<IiQQ{n}d", c.id, mid, c.width, c.height, *c.params))
        with open(model_dir / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(images)))
            for im in images:
                f.write(struct.pack("<I7dI", im.id, *im.qvec, *im.tvec, im.camera_id))
                f.write(im.name.encode("utf-8") + b"\x00" + struct.pack("<Q", 0))
        with open(model_dir / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", len(pts)))
            for i, (p, c) in enumerate(zip(pts, cols, strict=True)):
                f.write(struct.pack("<Q3d3BdQ", i + 1, *p, *(int(v) for v in c), 0.0, 0))
    else:
        with open(model_dir / "cameras.txt", "w", encoding="utf-8") as f:
            f.write("# Camera list with one line of data per camera:\n")
            f.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
            for c in cameras:
                f.write(
                    " ".join([str(c.id), c.model, str(c.width), str(c.height), *map(repr, c.params)]) + "\n"
                )
        with open(model_dir / "images.txt", "w", encoding="utf-8") as f:
            f.write("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
            f.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
            for im in images:
                vals = [*map(repr, map(float, im.qvec)), *map(repr, map(float, im.tvec))]
                f.write(" ".join([str(im.id), *vals, str(im.camera_id), im.name]) + "\n\n")
        with open(model_dir / "points3D.txt", "w", encoding="utf-8") as f:
            f.write("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
            for i, (p, c) in enumerate(zip(pts, cols, strict=True)):
                f.write(
                    " ".join([str(i + 1), *map(repr, map(float, p)), *map(str, map(int, c)), "0.0"]) + "\n"
                )


# ----------------------------------------------------------------------------------------------- loader


def camera_intrinsics(cam: ColmapCamera, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """K and (k1, k2, p1, p2, k3) of a supported COLMAP camera (None for pinhole models)."""
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        K, coeffs = check_intrinsics(p[0], p[0], p[1], p[2], where), None
    elif cam.model == "PINHOLE":
        K, coeffs = check_intrinsics(p[0], p[1], p[2], p[3], where), None
    elif cam.model == "SIMPLE_RADIAL":
        K, coeffs = check_intrinsics(p[0], p[0], p[1], p[2], where), as_coeffs(k1=p[3])
    elif cam.model == "RADIAL":
        K, coeffs = check_intrinsics(p[0], p[0], p[1], p[2], where), as_coeffs(k1=p[3], k2=p[4])
    elif cam.model == "OPENCV":
        K = check_intrinsics(p[0], p[1], p[2], p[3], where)
        coeffs = as_coeffs(k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    else:
        raise CaptureError(f"{where}: camera model {cam.model} is not supported.")
    if coeffs is not None and not np.all(np.isfinite(coeffs)):
        raise CaptureError(f"{where}: distortion parameters are not finite ({coeffs.tolist()}).")
    return K, (None if is_pinhole(coeffs) else coeffs)


def find_image_dir(model_dir: Path) -> Path | None:
    """``images/`` in the model folder, beside it (``<project>/sparse``) or two levels up (``sparse/0``)."""
    for cand in (model_dir / "images", model_dir.parent / "images", model_dir.parent.parent / "images"):
        if cand.is_dir():
            return cand
    return None


def load_colmap(
    model_dir: str | Path,
    *,
    image_dir: str | Path | None = None,
    resolution: int | None = None,
    downscale: float | None = None,
    background: tuple[float, float, float] | None = None,
) -> Capture:
    """Load a COLMAP sparse model and its images; views sorted by image name."""
    model_dir = Path(model_dir)
    model = read_model(model_dir)
    kind = "cameras.bin" if model.binary else "cameras.txt"
    if not model.images:
        raise CaptureError(f"COLMAP model {model_dir} has no registered images.")
    if image_dir is None:
        found = find_image_dir(model_dir)
        if found is None:
            raise CaptureError(
                f"Cannot find the images of the COLMAP model {model_dir}: looked for an 'images' folder "
                "in it, beside it and two levels up. Pass the image folder explicitly (image_dir)."
            )
        image_dir = found
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise CaptureError(f"Image folder {image_dir} does not exist.")

    specs: list[ViewSpec] = []
    rescaled: list[str] = []
    rotated: list[str] = []
    for im in sorted(model.images, key=lambda im: im.name):
        where = f"{model_dir}: image {im.name!r}"
        cam = model.cameras.get(im.camera_id)
        if cam is None:
            raise CaptureError(
                f"{where} refers to camera id {im.camera_id}, which is not in {kind} "
                f"(cameras there: {sorted(model.cameras)})."
            )
        if cam.model not in SUPPORTED_MODELS:
            raise CaptureError(
                f"{where} uses the {cam.model} camera model, which cannot be loaded directly "
                f"(supported: {', '.join(SUPPORTED_MODELS)}). Undistort the capture with COLMAP first:\n"
                f"  colmap image_undistorter --image_path {image_dir} --input_path {model_dir} "
                f"--output_path <new folder> --output_type COLMAP\n"
                "then load <new folder>."
            )
        if (
            not (np.all(np.isfinite(im.qvec)) and np.all(np.isfinite(im.tvec)))
            or np.linalg.norm(im.qvec) < 1e-9
        ):
            raise CaptureError(
                f"{where}: pose is not finite or has a zero quaternion ({im.qvec}, {im.tvec})."
            )
        K, coeffs = camera_intrinsics(cam, f"{kind}: camera {cam.id}")

        path = image_dir / im.name
        if not path.is_file():
            raise CaptureError(f"{where}: image file not found: {path}")
        info = probe_image(path)
        size = (info.width, info.height)
        if info.exif_orientation != 1:
            rotated.append(im.name)
        if size != (cam.width, cam.height):
            # images resized after reconstruction (e.g. images_4/) are fine when the aspect ratio matches;
            # distortion acts on normalised coordinates, so only K needs rescaling
            if abs(size[0] / cam.width * cam.height - size[1]) <= 1.0:
                K = np.diag([size[0] / cam.width, size[1] / cam.height, 1.0]) @ K
                rescaled.append(im.name)
            else:
                hint = " (the file has a rotated EXIF orientation)" if info.exif_orientation >= 5 else ""
                raise CaptureError(
                    f"{where}: image {path} is {size[0]}x{size[1]} but camera {cam.id} is "
                    f"{cam.width}x{cam.height}{hint}."
                )
        specs.append(ViewSpec(im.name, path, size, K, im.world_to_cam(), coeffs))

    meta: dict = {
        "path": str(model_dir),
        "format": "colmap_binary" if model.binary else "colmap_text",
        "image_path": str(image_dir),
        "camera_models": sorted({model.cameras[im.camera_id].model for im in model.images}),
    }
    if rescaled:
        meta["rescaled_to_image_size"] = rescaled
    if rotated:
        meta["exif_orientation_ignored"] = rotated
    bg = tuple(float(c) for c in background) if background is not None else (0.0, 0.0, 0.0)
    views = build_views(specs, resolution=resolution, downscale=downscale, background=bg, meta=meta)

    points = colors = None
    if model.points is not None and len(model.points):
        points = model.points.astype(np.float32)
        colors = model.colors.astype(np.float32) / 255.0
    meta["num_points"] = 0 if points is None else int(len(points))
    return Capture(views=views, source="colmap", background=bg, points=points, point_colors=colors, meta=meta)
