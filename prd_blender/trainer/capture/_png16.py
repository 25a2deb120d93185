"""Minimal decoder for 16-bit PNGs.

Pillow opens 16-bit RGB and RGBA PNGs (e.g. Blender renders saved with "Color Depth 16") as 8-bit
images, keeping only the high byte. Those files are common in synthetic captures, so we decode them
ourselves: zlib + PNG row filters (the Paeth and Average filters are sequential within a row, hence numba).
Only non-interlaced files; the caller falls back to Pillow otherwise. Imported lazily (numba is slow
to import) by :mod:`.images`.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numba
import numpy as np

from .images import png_header

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> channels


@numba.njit(cache=True)
def _unfilter(raw, height, stride, bpp):  # pragma: no cover - compiled
    """Undo the per-row PNG filters; returns (pixels, 1 + index of a row with a bad filter type or 0)."""
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for r in range(height):
        base = r * (stride + 1)
        ftype = raw[base]
        if ftype > 4:
            return out, r + 1
        for i in range(stride):
            x = np.int32(raw[base + 1 + i])
            a = np.int32(out[r, i - bpp]) if i >= bpp else np.int32(0)
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else np.int32(0)
            if ftype == 1:
                x += a
            elif ftype == 2:
                x += b
            elif ftype == 3:
                x += (a + b) // 2
            elif ftype == 4:
                p = a + b - c
                pa = abs(p - a)
                pb = abs(p - b)
                pc = abs(p - c)
                if pa <= pb and pa <= pc:
                    x += a
                elif pb <= pc:
                    x += b
                else:
                    x += c
            out[r, i] = np.uint8(x & 255)
        for i in range(stride):
            prev[i] = np.int32(out[r, i])
    return out, 0


def decode_png16(path: Path, data: bytes) -> np.ndarray:
    """Decode a non-interlaced 16-bit PNG to a uint16 (H, W, C) array. Raises ValueError if corrupt."""
    header = png_header(data)
    if header is None:
        raise ValueError("not a PNG file")
    width, height, depth, ctype, interlace = header
    if depth != 16 or interlace != 0 or ctype not in _CHANNELS:
        raise ValueError("not a non-interlaced 16-bit PNG")
    channels = _CHANNELS[ctype]
    idat = []
    pos = 8
    while pos + 8 <= len(data):
        length, ctype_chunk = struct.unpack(">I4s", data[pos : pos + 8])
        if pos + 12 + length > len(data):
            raise ValueError(f"chunk {ctype_chunk!r} is truncated")
        if ctype_chunk == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        elif ctype_chunk == b"IEND":
            break
        pos += 12 + length
    else:
        raise ValueError("file ends before the IEND chunk (truncated)")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"compressed image data is corrupt ({exc})") from exc
    stride = width * channels * 2
    if len(raw) < height * (stride + 1):
        raise ValueError("image data is shorter than the header says (truncated)")
    out, bad_row = _unfilter(np.frombuffer(raw, dtype=np.uint8), height, stride, channels * 2)
    if bad_row:
        raise ValueError(f"invalid filter type in row {bad_row - 1}")
    return out.view(">u2").reshape(height, width, channels).astype(np.uint16)
