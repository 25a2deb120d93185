"""Reading image files into float32 arrays, and area resampling.

Decisions:
- 8-bit files map to [0, 1] by /255, 16-bit files by /65535 (16-bit RGB/RGBA PNGs go through our own
  decoder because Pillow keeps only their high byte). Values stay in the file's display space.
- EXIF orientation is *ignored*, not applied: COLMAP and nerfstudio estimate cameras on the stored
  pixel grid, so rotating the pixels would break the intrinsics. Files carrying a rotated orientation
  are reported by :func:`probe_image` so loaders can mention it (e.g. when sizes do not match).
- Resizing is exact box (area) averaging, done on premultiplied colour by the caller.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .types import CaptureError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_EXIF_ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says, read without decoding the pixels."""

    path: Path
    width: int
    height: int
    has_alpha: bool
    exif_orientation: int  # 1 = as stored; 2..8 = a viewer would flip/rotate it (we do not)


def probe_image(path: Path) -> ImageInfo:
    """Open an image's header (cheap) to learn its size and whether it has alpha."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"Image file not found: {path}")
    if path.suffix.lower() in (".exr", ".hdr"):
        raise CaptureError(f"{path}: {path.suffix} images are not supported; use PNG or JPEG files.")
    try:
        with Image.open(path) as im:
            width, height = im.size
            has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            orientation = _exif_orientation(im)
    except UnidentifiedImageError as exc:
        raise CaptureError(f"{path}: not a readable image (unknown format or corrupt file).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CaptureError(f"{path}: cannot read image header ({exc}).") from exc
    if width <= 0 or height <= 0:
        raise CaptureError(f"{path}: image has no pixels ({width}x{height}).")
    return ImageInfo(path, int(width), int(height), bool(has_alpha), orientation)


def png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit_depth, colour_type, interlace) of a PNG, or None if ``data`` is no PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, ctype, interlace


def _exif_orientation(im: Image.Image) -> int:
    try:
        if im.format == "PNG":
            # Pillow's PNG getexif() decodes the whole image to look for a trailing eXIf chunk; only
            # consult an EXIF block found among the header chunks
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        return int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return 1


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an image file to float32 RGB (H, W, 3) in [0, 1] and straight alpha (H, W) or None."""
    arr = read_image_array(path)
    if arr.shape[2] == 4:
        return arr[..., :3], arr[..., 3]
    return arr, None


def read_image_array(path: Path) -> np.ndarray:
    """Decode an image file to float32 (H, W, 3) RGB or (H, W, 4) straight RGBA in [0, 1]."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"Cannot read image file {path}: {exc.strerror or exc}") from exc

    header = png_header(data)
    if header is not None and header[2] == 16 and header[4] == 0:
        from ._png16 import decode_png16  # numba: only imported when such a file shows up

        try:
            arr = decode_png16(path, data).astype(np.float32) / 65535.0
        except ValueError as exc:
            raise CaptureError(f"{path}: corrupt PNG file ({exc}).") from exc
        return _split_channels(arr)

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = _pil_to_float(im)
    except CaptureError:
        raise
    except UnidentifiedImageError as exc:
        raise CaptureError(f"{path}: not a readable image (unknown format or corrupt file).") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, zlib.error... for damaged files
        raise CaptureError(f"{path}: corrupt or truncated image ({exc}).") from exc
    return _split_channels(arr)


def _pil_to_float(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    target = "RGBA" if has_alpha else "RGB"
    if mode != target:
        im = im.convert(target)
    arr = np.asarray(im).astype(np.float32)
    arr *= np.float32(1.0 / 255.0)
    return arr


def _split_channels(arr: np.ndarray) -> np.ndarray:
    """Grey -> RGB, grey+alpha -> RGBA; RGB and RGBA pass through."""
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 2:
        return np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:]], axis=2)
    return arr


def output_size(width: int, height: int, resolution: int | None, downscale: float | None) -> tuple[int, int]:
    """Size after downscaling.

    ``resolution`` caps the longer side (images already smaller are kept, never enlarged);
    ``downscale`` divides both sides. Sizes round half up so that e.g. 800 / 8 is exactly 100.
    """
    if resolution is not None:
        scale = min(1.0, resolution / max(width, height))
    elif downscale is not None:
        scale = 1.0 / downscale
    else:
        return width, height
    if scale >= 1.0:
        return width, height
    return max(1, int(np.floor(width * scale + 0.5))), max(1, int(np.floor(height * scale + 0.5)))


def scale_intrinsics(K: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """K for the same camera after resampling the image from ``size`` to ``new_size`` (width, height).

    Exact under the pixel-centre-at-(i + 0.5) convention: the continuous image plane is just scaled.
    """
    sx = new_size[0] / size[0]
    sy = new_size[1] / size[1]
    return np.diag([sx, sy, 1.0]) @ np.asarray(K, dtype=np.float64)


def area_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Exact area (box) resampling of an (H, W) or (H, W, C) float image to (height, width).

    Each output pixel is the mean of the input over its footprint, fractional pixels weighted by the
    covered fraction; computed per axis from prefix sums, so any real factor (2, 2.5, 7.3...) is exact.
    """
    out = image.astype(np.float32, copy=False)
    if out.shape[0] != height:
        out = _area_axis(out, height, 0)
    if out.shape[1] != width:
        out = _area_axis(out, width, 1)
    return out


def _area_axis(arr: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(arr, axis, 0)
    n = moved.shape[0]
    rest = moved.shape[1:]
    if n % n_out == 0:  # whole-number factor: plain block mean, same result, much faster
        f = n // n_out
        out = moved.reshape(n_out, f, *rest).mean(axis=1, dtype=np.float64).astype(np.float32)
        return np.moveaxis(out, 0, axis)
    # general factor: output pixel j covers input interval [j * step, (j + 1) * step); it overlaps at
    # most ceil(step) + 1 input pixels, so accumulate that many weighted taps (a banded matrix product)
    step = n / n_out
    lo = np.arange(n_out, dtype=np.float64) * step
    hi = lo + step
    first = np.floor(lo).astype(np.int64)
    result = np.zeros((n_out, *rest), dtype=np.float32)
    for k in range(int(np.ceil(step)) + 1):
        i = first + k
        weight = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None) / step
        if not np.any(weight > 0):
            continue
        w = weight.astype(np.float32).reshape((n_out,) + (1,) * len(rest))
        result += w * moved[np.minimum(i, n - 1)]
    return np.moveaxis(result, 0, axis)
