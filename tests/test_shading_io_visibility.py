"""HDR/EXR files, and the visibility bake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prd_blender.trainer.shading.hdr_io import read_exr, read_exr_channels, read_hdr, read_image, write_exr
from prd_blender.trainer.shading.visibility import bake_visibility
from prd_blender.trainer.train.sh import sh_basis


def _to_rgbe(img: np.ndarray) -> np.ndarray:
    m = img.max(-1)
    e = np.where(m > 1e-32, np.floor(np.log2(np.maximum(m, 1e-32))) + 1, 0)
    mant = np.where(m[..., None] > 1e-32, img / np.exp2(e)[..., None] * 256, 0)
    out = np.concatenate([np.clip(mant, 0, 255).astype(np.uint8), np.where(m > 1e-32, e + 128, 0)[..., None]], -1)
    return out.astype(np.uint8)


def _rle_channel(vals: np.ndarray) -> bytes:
    out = bytearray()
    i = 0
    while i < len(vals):
        j = i
        while j < len(vals) and j - i < 127 and vals[j] == vals[i]:
            j += 1
        if j - i >= 3:
            out += bytes([128 + j - i, vals[i]])
            i = j
        else:
            k = min(len(vals), i + 128)
            out += bytes([k - i]) + bytes(vals[i:k])
            i = k
    return bytes(out)


def _write_hdr(path, img: np.ndarray, rle: bool) -> None:
    h, w, _ = img.shape
    rgbe = _to_rgbe(img)
    body = bytearray()
    for y in range(h):
        if rle:
            body += bytes([2, 2, w >> 8, w & 255])
            for c in range(4):
                body += _rle_channel(rgbe[y, :, c])
        else:
            body += rgbe[y].tobytes()
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode() + bytes(body))


@pytest.mark.parametrize("rle", [True, False])
def test_hdr_round_trip(tmp_path, rle):
    rng = np.random.default_rng(0)
    img = (rng.random((12, 40, 3)) * 10).astype(np.float32)
    img[:, 10:30] = [2.0, 0.5, 0.25]  # runs for the RLE encoder
    path = tmp_path / "a.hdr"
    _write_hdr(path, img, rle)
    back = read_image(path)
    assert back.shape == img.shape and back.dtype == np.float32
    assert np.allclose(back, img, rtol=0, atol=0.05)  # 8-bit mantissas of values up to 10
    # Truncated and corrupt files: ValueError naming the file.
    raw = path.read_bytes()
    (tmp_path / "cut.hdr").write_bytes(raw[: len(raw) - 30])
    with pytest.raises(ValueError, match="cut.hdr"):
        read_hdr(tmp_path / "cut.hdr")
    (tmp_path / "bad.hdr").write_bytes(b"#?RADIANCE\n\n-Y 10 +Q 3\n")
    with pytest.raises(ValueError, match="bad.hdr"):
        read_hdr(tmp_path / "bad.hdr")


def test_exr_round_trip_and_multipart(tmp_path):
    import OpenEXR

    img = np.random.default_rng(0).random((6, 10, 3)).astype(np.float32) * 5
    write_exr(tmp_path / "a.exr", img)
    assert np.array_equal(read_exr(tmp_path / "a.exr"), img)
    # Blender-style multi-part, multi-layer file.
    parts = [
        OpenEXR.Part({}, {f"ViewLayer.Combined.{c}": np.ascontiguousarray(img[..., i]) for i, c in enumerate("RGB")},
                     "ViewLayer.Combined"),
        OpenEXR.Part({}, {"ViewLayer.Depth.Z": np.ascontiguousarray(img[..., 0] * 2)}, "ViewLayer.Depth"),
    ]
    OpenEXR.File(parts).write(str(tmp_path / "m.exr"))
    ch = read_exr_channels(tmp_path / "m.exr")
    assert {"ViewLayer.Combined.R", "ViewLayer.Combined.G", "ViewLayer.Combined.B", "ViewLayer.Depth.Z"} <= set(ch)
    assert np.array_equal(read_exr(tmp_path / "m.exr"), img)
    (tmp_path / "c.exr").write_bytes((tmp_path / "a.exr").read_bytes()[:100])
    with pytest.raises(ValueError, match="c.exr"):
        read_exr(tmp_path / "c.exr")


def _blob(n: int = 3000, radius: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = d * radius * rng.random(n)[:, None] ** (1 / 3)
    quats = np.tile([1.0, 0, 0, 0], (n, 1))
    return means, np.full((n, 3), 0.04), quats, np.full(n, 0.95)


def _eval(v_sh: torch.Tensor, d) -> float:
    return float(sh_basis(torch.tensor([d], dtype=torch.float32), 2)[0] @ v_sh)


def test_visibility_blob_occludes_towards_it():
    means, scales, quats, opac = _blob()
    grid = bake_visibility(means, scales, quats, opac, resolution=32, directions=128, band=6,
                           bounds=(np.full(3, -1.0), np.full(3, 1.0)))
    pts = torch.tensor([[0.6, 0, 0], [0, 0, -0.6], [5.0, 0, 0]], dtype=torch.float32)
    v = grid.query(pts)
    assert v.shape == (3, 9)
    # Next to the blob: dark towards it, lit away from it.
    assert _eval(v[0], (-1, 0, 0)) < 0.5 < _eval(v[0], (1, 0, 0))
    assert _eval(v[1], (0, 0, 1)) < 0.5 < _eval(v[1], (0, 0, -1))
    # Mean visibility ~ 1 - solid-angle fraction of the blob (half-angle asin(0.3/0.6) = 30 deg: 6.7 %).
    mean_v = float(v[0, 0]) / math.sqrt(4 * math.pi)
    assert 0.8 < mean_v < 0.97, mean_v  # the blob edge is blurred by its Gaussians and the cells
    # Far away (outside the grid): exactly unoccluded.
    assert torch.allclose(v[2], torch.tensor([math.sqrt(4 * math.pi)] + [0.0] * 8))


def test_visibility_is_read_off_the_surface():
    # A point on a solid blob's surface, normal pointing out, uniform white light: the blob lies in the
    # lower hemisphere, so the diffuse term must be (nearly) unoccluded. Read at the point itself, half of
    # the trilinear corners are inside the blob and it comes out far too dark; the normal offset fixes it.
    from prd_blender.trainer.shading.brdf_lut import get_brdf_lut
    from prd_blender.trainer.shading.envmap import EnvironmentLight
    from prd_blender.trainer.train.distill import DistillConfig, shade_maps

    means, scales, quats, opac = _blob(6000)
    grid = bake_visibility(means, scales, quats, opac, resolution=32, directions=128, band=6,
                           bounds=(np.full(3, -1.0), np.full(3, 1.0)))
    n = torch.tensor([[[1.0, 0, 0]]])
    maps = {"albedo": torch.ones(1, 1, 3), "roughness": torch.ones(1, 1, 1), "metallic": torch.zeros(1, 1, 1),
            "normal": n, "view": n, "position": torch.tensor([[[0.3, 0, 0]]]), "progress": torch.ones(1, 1, 1),
            "raw": torch.zeros(1, 1, 3)}
    light = EnvironmentLight(16, init=1.0)

    def diffuse(vis, offset: float) -> float:
        with torch.no_grad():
            # the direct term alone: the bounce would partly refill what a wrong reading blocks
            cfg = DistillConfig(visibility_offset=offset, specular_visibility=False, indirect=0.0)
            return float(shade_maps(maps, light, get_brdf_lut(), vis, 3, cfg)["phy"][0, 0, 0])

    open_sky = diffuse(None, 0.0)
    assert diffuse(grid, DistillConfig().visibility_offset) > 0.95 * open_sky
    assert diffuse(grid, 0.0) < 0.5 * open_sky
