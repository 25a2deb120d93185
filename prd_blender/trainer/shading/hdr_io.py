"""HDR image files: Radiance ``.hdr`` (RGBE) and OpenEXR, read into float32 numpy arrays (H, W, 3).

The ``.hdr`` reader is our own (the format is small: a text header, a resolution line, then RGBE
scanlines, usually run-length encoded per channel); the RLE decoder is compiled with Numba because a
2k environment map has millions of runs. EXR goes through the ``OpenEXR`` package; Blender 5 writes
multi-part / multi-layer files (channel names like ``ViewLayer.Combined.R``), so :func:`read_exr_channels`
returns every channel of every part and :func:`read_exr` picks an RGB triple from them.

Every failure to parse a file raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from numba import njit

__all__ = ["read_hdr", "read_exr", "read_exr_channels", "read_image", "write_exr"]


@njit(cache=True)
def _decode_scanlines(data, pos, width, height, out):
    """Decodes ``height`` RGBE scanlines starting at byte ``pos`` into ``out`` (H, W, 4) uint8.

    Returns the position after the last byte read, or a negative code on error
    (-1: truncated, -2: corrupt run / bad scanline width)."""
    n = data.shape[0]
    for y in range(height):
        if pos + 4 > n:
            return -1
        b0 = data[pos]
        b1 = data[pos + 1]
        b2 = data[pos + 2]
        if width < 8 or width > 32767 or b0 != 2 or b1 != 2 or (b2 & 0x80) != 0:
            # Flat (or old-style RLE) scanline: 4 bytes per pixel; (1, 1, 1, k) repeats the previous
            # pixel k << shift times.
            x = 0
            shift = 0
            while x < width:
                if pos + 4 > n:
                    return -1
                r = data[pos]
                g = data[pos + 1]
                b = data[pos + 2]
                e = data[pos + 3]
                pos += 4
                if r == 1 and g == 1 and b == 1:
                    if x == 0:
                        return -2
                    count = np.int64(e) << shift
                    if x + count > width:
                        return -2
                    for k in range(count):
                        for c in range(4):
                            out[y, x + k, c] = out[y, x - 1, c]
                    x += count
                    shift += 8
                else:
                    out[y, x, 0] = r
                    out[y, x, 1] = g
                    out[y, x, 2] = b
                    out[y, x, 3] = e
                    x += 1
                    shift = 0
            continue
        # New-style RLE: header (2, 2, width_hi, width_lo), then each of the 4 channels separately.
        if (np.int64(b2) << 8 | data[pos + 3]) != width:
            return -2
        pos += 4
        for c in range(4):
            x = 0
            while x < width:
                if pos >= n:
                    return -1
                count = np.int64(data[pos])
                pos += 1
                if count > 128:
                    count -= 128
                    if x + count > width or pos >= n:
                        return -2 if x + count > width else -1
                    v = data[pos]
                    pos += 1
                    for k in range(count):
                        out[y, x + k, c] = v
                else:
                    if count == 0 or x + count > width:
                        return -2
                    if pos + count > n:
                        return -1
                    for k in range(count):
                        out[y, x + k, c] = data[pos + k]
                    pos += count
                x += count
    return pos


_RES_RE = re.compile(rb"^([-+])([XY]) (\d+) ([-+])([XY]) (\d+)$")


def read_hdr(path: str | Path) -> np.ndarray:
    """Reads a Radiance RGBE ``.hdr`` file into float32 (H, W, 3), top row first."""
    path = Path(path)
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    raw = data.tobytes()
    if not (raw.startswith(b"#?RADIANCE") or raw.startswith(b"#?RGBE")):
        raise ValueError(f"{path}: not a Radiance .hdr file (missing '#?RADIANCE' signature)")
    # Header: text lines up to an empty line, then the resolution line.
    end = raw.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{path}: truncated .hdr header")
    for line in raw[:end].split(b"\n")[1:]:
        if line.startswith(b"FORMAT=") and line.strip() != b"FORMAT=32-bit_rle_rgbe":
            raise ValueError(f"{path}: unsupported .hdr pixel format {line[7:].decode(errors='replace')!r}")
    res_end = raw.find(b"\n", end + 2)
    if res_end < 0:
        raise ValueError(f"{path}: truncated .hdr (no resolution line)")
    m = _RES_RE.match(raw[end + 2:res_end].strip())
    if m is None:
        raise ValueError(f"{path}: bad .hdr resolution line {raw[end + 2:res_end][:40]!r}")
    s1, a1, n1, s2, a2, n2 = m.groups()
    if a1 == a2:
        raise ValueError(f"{path}: bad .hdr resolution line")
    n_major, n_minor = int(n1), int(n2)
    if n_major <= 0 or n_minor <= 0 or n_major * n_minor > 1 << 30:
        raise ValueError(f"{path}: implausible .hdr size {n_minor}x{n_major}")
    rgbe = np.zeros((n_major, n_minor, 4), np.uint8)
    pos = _decode_scanlines(data, res_end + 1, n_minor, n_major, rgbe)
    if pos == -1:
        raise ValueError(f"{path}: truncated .hdr pixel data")
    if pos < 0:
        raise ValueError(f"{path}: corrupt .hdr run-length data")
    # Radiance's (and Blender's) decoding: (mantissa + 0.5) * 2^(exponent - 136); exponent 0 is black.
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(np.float32(1.0), e - 136), 0.0).astype(np.float32)
    img = (rgbe[..., :3].astype(np.float32) + 0.5) * scale[..., None]
    # Standard files are "-Y H +X W" (rows top to bottom, columns left to right); handle the rest.
    if a1 == b"X":  # columns are the major axis: transpose to rows
        img = img.transpose(1, 0, 2)
        s1, s2 = s2, s1
    if s1 == b"+":
        img = img[::-1]
    if s2 == b"-":
        img = img[:, ::-1]
    return np.ascontiguousarray(img, dtype=np.float32)


def read_exr_channels(path: str | Path) -> dict[str, np.ndarray]:
    """Every channel of every part of an EXR, as float32 (H, W) arrays.

    Keys are the channel names; in multi-part files a channel name that appears in several parts
    gets the part name prefixed (``part.channel``)."""
    import OpenEXR  # imported lazily: only EXR users need it

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such EXR file")
    try:
        f = OpenEXR.File(str(path), separate_channels=True)
        out: dict[str, np.ndarray] = {}
        for part in f.parts:
            pname = part.name() if callable(getattr(part, "name", None)) else ""
            for name, ch in part.channels.items():
                key = name if name not in out else f"{pname}.{name}"
                out[key] = np.asarray(ch.pixels, dtype=np.float32)
    except ValueError:
        raise
    except Exception as exc:  # OpenEXR raises RuntimeError/IOError flavours for corrupt files
        raise ValueError(f"{path}: cannot read EXR ({exc})") from exc
    if not out:
        raise ValueError(f"{path}: EXR has no channels")
    return out


def _pick_rgb(names: list[str]) -> tuple[str, str, str] | None:
    """An (R, G, B) channel triple: plain R/G/B first, then a layer prefix, preferring 'Combined'."""
    if {"R", "G", "B"} <= set(names):
        return "R", "G", "B"
    prefixes = [n[:-2] for n in names if n.endswith(".R") and f"{n[:-2]}.G" in names and f"{n[:-2]}.B" in names]
    if not prefixes:
        return None
    prefixes.sort(key=lambda p: (not p.endswith("Combined"), not p.endswith("Image"), p))
    p = prefixes[0]
    return f"{p}.R", f"{p}.G", f"{p}.B"


def read_exr(path: str | Path) -> np.ndarray:
    """An EXR's colour as float32 (H, W, 3): the R, G, B channels (or a layer's, e.g. ``*.Combined.R``);
    a single grey channel (Y or one channel) is replicated."""
    ch = read_exr_channels(path)
    triple = _pick_rgb(list(ch))
    if triple is not None:
        arrays = [ch[n] for n in triple]
    elif "Y" in ch or len(ch) == 1:
        arrays = [ch.get("Y", next(iter(ch.values())))] * 3
    else:
        raise ValueError(f"{path}: EXR has no RGB channels (found {sorted(ch)[:8]})")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"{path}: EXR RGB channels differ in size")
    return np.ascontiguousarray(np.stack(arrays, axis=-1), dtype=np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """Reads an ``.hdr`` or ``.exr`` environment map into float32 (H, W, 3), by file extension."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".hdr":
        return read_hdr(path)
    if ext == ".exr":
        return read_exr(path)
    raise ValueError(f"{path}: unsupported HDR image extension {ext!r} (expected .hdr or .exr)")


def write_exr(path: str | Path, rgb: np.ndarray) -> None:
    """Writes float32 linear RGB (H, W, 3) as a single-part, ZIP-compressed EXR."""
    import OpenEXR

    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: expected an (H, W, 3) image, got shape {rgb.shape}")
    channels = {c: np.ascontiguousarray(rgb[..., i]) for i, c in enumerate("RGB")}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, channels).write(str(path))
