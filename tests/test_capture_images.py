"""Image reading (8/16-bit, grey, palette, alpha) and downscaling (K scaling, area filter, no fringes)."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.capture import load_capture
from prd_blender.trainer.capture.images import area_resize, output_size, read_image

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def write_png16(path: Path, arr: np.ndarray) -> None:
    """16-bit PNG writer that cycles through all five row filters (Pillow cannot write RGB16)."""
    h, w, c = arr.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int32)
    out = bytearray()
    prev = np.zeros(rows.shape[1], np.int32)
    for r in range(h):
        cur = rows[r]
        ftype = r % 5
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if ftype == 0:
            filt = cur
        elif ftype == 1:
            filt = cur - left
        elif ftype == 2:
            filt = cur - prev
        elif ftype == 3:
            filt = cur - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            filt = cur - pred
        out.append(ftype)
        out += (filt & 255).astype(np.uint8).tobytes()
        prev = cur

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(out)))
        + chunk(b"IEND", b"")
    )


def one_view_json(folder: Path, file_name: str, **extra) -> Path:
    c2w = np.linalg.inv(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1.0]])) @ FLIP
    data = {
        "camera_angle_x": 1.0,
        **extra,
        "frames": [{"file_path": file_name, "transform_matrix": c2w.tolist()}],
    }
    path = folder / "transforms.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_exact(tmp_path: Path, channels: int):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, size=(9, 7, channels), dtype=np.uint16)
    write_png16(tmp_path / "x.png", arr)
    rgb, alpha = read_image(tmp_path / "x.png")
    colour = arr[..., :3] if channels >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    np.testing.assert_allclose(rgb, colour / 65535.0, atol=1e-7)
    if channels in (2, 4):
        np.testing.assert_allclose(alpha, arr[..., -1] / 65535.0, atol=1e-7)
    else:
        assert alpha is None


def test_8bit_modes(tmp_path: Path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    rgb, alpha = read_image(tmp_path / "l.png")
    assert rgb.shape == (5, 6, 3) and alpha is None
    np.testing.assert_allclose(rgb[..., 1], grey / 255, atol=1e-7)

    la = rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgb, alpha = read_image(tmp_path / "la.png")
    np.testing.assert_allclose(rgb[..., 2], la[..., 0] / 255, atol=1e-7)
    np.testing.assert_allclose(alpha, la[..., 1] / 255, atol=1e-7)

    pal = Image.fromarray(grey, "L").convert("P")
    pal.save(tmp_path / "p.png")
    rgb, alpha = read_image(tmp_path / "p.png")
    assert rgb.shape == (5, 6, 3) and alpha is None

    grey16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb, _ = read_image(tmp_path / "g16.png")
    np.testing.assert_allclose(rgb[..., 0], grey16 / 65535, atol=1e-7)

    jpg = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(jpg).save(tmp_path / "j.jpg", quality=95)
    rgb, alpha = read_image(tmp_path / "j.jpg")
    assert rgb.shape == (8, 8, 3) and alpha is None and rgb.dtype == np.float32


def test_exif_orientation_is_ignored_and_reported(tmp_path: Path):
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" for viewers
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    cap = load_capture(one_view_json(tmp_path, "rot.jpg"))
    view = cap.views[0]
    assert view.image.shape == (16, 24, 3)  # stored pixel grid, not rotated
    assert view.image[0, 0].mean() > 0.8
    assert cap.meta["exif_orientation_ignored"] == ["rot.jpg"]


# ------------------------------------------------------------------------------------------ resizing


def test_output_size_rules():
    assert output_size(800, 800, None, 8) == (100, 100)
    assert output_size(40, 30, None, 2.5) == (16, 12)
    assert output_size(1000, 500, 250, None) == (250, 125)
    assert output_size(500, 1000, 250, None) == (125, 250)  # longer side is the height here
    assert output_size(100, 50, 400, None) == (100, 50)  # never enlarged
    assert output_size(30, 20, None, None) == (30, 20)
    assert output_size(3, 3, None, 10) == (1, 1)


def test_area_resize_matches_brute_force():
    rng = np.random.default_rng(3)
    img = rng.random((13, 17, 2)).astype(np.float32)

    def brute_axis(x: np.ndarray, n_out: int) -> np.ndarray:
        n, step = len(x), len(x) / n_out
        out = np.zeros((n_out, *x.shape[1:]))
        for j in range(n_out):
            for i in range(n):
                overlap = max(0.0, min((j + 1) * step, i + 1) - max(j * step, i))
                out[j] += overlap * x[i]
        return out / step

    expected = np.swapaxes(brute_axis(np.swapaxes(brute_axis(img, 5), 0, 1), 7), 0, 1)
    np.testing.assert_allclose(area_resize(img, 7, 5), expected, atol=1e-6)
    # whole-number factors take a faster path that must agree
    np.testing.assert_allclose(
        area_resize(img[:12, :16], 8, 4), img[:12, :16].reshape(4, 3, 8, 2, 2).mean((1, 3)), atol=1e-6
    )
    # mean brightness is preserved by an area filter
    assert area_resize(img, 7, 5).mean() == pytest.approx(img.mean(), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "size"),
    [({"downscale": 2}, (24, 16)), ({"downscale": 2.5}, (19, 13)), ({"resolution": 20}, (20, 13))],
)
def test_downscale_scales_K_and_moves_points_with_it(tmp_path: Path, kwargs: dict, size: tuple[int, int]):
    """A bright square projected at a known pixel lands at the scaled pixel after downscaling."""
    W, H = 48, 32
    arr = np.zeros((H, W, 3), np.uint8)
    arr[10:14, 28:32] = 255  # centroid at (30.0, 12.0) in continuous pixel coordinates
    Image.fromarray(arr).save(tmp_path / "sq.png")
    # fl/cx chosen so that the 3D point (X, Y, 3) projects onto the square's centroid
    fx, fy, cx, cy = 40.0, 44.0, 23.0, 17.0
    point = [(30.0 - cx) * 3 / fx, (12.0 - cy) * 3 / fy, 0.0]
    c2w = np.eye(4)
    c2w[2, 3] = -3.0  # camera at z = -3 looking along +z (OpenCV), i.e. at the point plane z = 0
    data = {
        "fl_x": fx,
        "fl_y": fy,
        "cx": cx,
        "cy": cy,
        "frames": [{"file_path": "sq.png", "transform_matrix": (c2w @ FLIP).tolist()}],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    full = load_capture(tmp_path).views[0]
    small = load_capture(tmp_path, **kwargs).views[0]
    assert (small.width, small.height) == size
    sx, sy = size[0] / W, size[1] / H
    np.testing.assert_allclose(small.K, np.diag([sx, sy, 1.0]) @ full.K)

    def proj(view):
        p = view.world_to_cam @ np.array([*point, 1.0])
        uvw = view.K @ p[:3]
        return uvw[:2] / uvw[2]

    np.testing.assert_allclose(proj(full), [30.0, 12.0], atol=1e-9)
    np.testing.assert_allclose(proj(small), [30.0 * sx, 12.0 * sy], atol=1e-9)
    # the image agrees: intensity centroid of the downscaled square is at the projected pixel
    img = small.image[..., 0]
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
    centroid = [(img * xs).sum() / img.sum(), (img * ys).sum() / img.sum()]
    np.testing.assert_allclose(centroid, proj(small), atol=0.15)


def test_downscale_premultiplied_has_no_fringe(tmp_path: Path):
    """A red opaque square on fully transparent *black* pixels, downscaled by a non-integer factor
    and composited over white: edge pixels must be pure mixes of red and white, never darker."""
    arr = np.zeros((30, 30, 4), np.uint8)
    arr[7:22, 8:23] = [255, 0, 0, 255]
    Image.fromarray(arr, "RGBA").save(tmp_path / "r.png")
    path = one_view_json(tmp_path, "r.png")
    view = load_capture(path, downscale=2.5).views[0]
    a = view.mask
    assert np.any((a > 0.1) & (a < 0.9))  # there are partially covered edge pixels
    np.testing.assert_allclose(view.image[..., 0], 1.0, atol=1e-6)  # red channel: red or white, always 1
    np.testing.assert_allclose(view.image[..., 1], 1.0 - a, atol=1e-6)
    np.testing.assert_allclose(view.image[..., 2], 1.0 - a, atol=1e-6)
    assert view.K[0, 0] == pytest.approx(0.5 * 12 / math.tan(0.5))
