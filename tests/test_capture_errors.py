"""Every kind of bad input raises CaptureError with a message naming the file and the problem."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.capture import CaptureError, load_capture
from prd_blender.trainer.capture.colmap import ColmapCamera, ColmapImage, write_model

W, H = 20, 16
GL_POSE = np.diag([1.0, -1.0, -1.0, 1.0])
GL_POSE[2, 3] = 3.0


def png(path: Path, size: tuple[int, int] = (W, H), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (10, 20, 30, 255)[: len(mode)]).save(path)
    return path


def transforms(tmp_path: Path, n: int = 2, **top) -> tuple[Path, dict]:
    """A valid NeRF Synthetic capture; returns (json path, data) so tests can break it."""
    frames = []
    for i in range(n):
        png(tmp_path / f"img_{i}.png")
        frames.append({"file_path": f"img_{i}", "transform_matrix": GL_POSE.tolist()})
    data = {"camera_angle_x": 0.8, **top, "frames": frames}
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(data))
    load_capture(path)  # sanity: valid before we break it
    return path, data


def rewrite(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def raises(path, match: str, **kwargs) -> str:
    with pytest.raises(CaptureError, match=match) as info:
        load_capture(path, **kwargs)
    return str(info.value)


def colmap(
    tmp_path: Path, *, binary: bool = True, model: str = "PINHOLE", params=(20.0, 20.0, 10.0, 8.0)
) -> Path:
    """A valid COLMAP project (sparse/0 + images); returns the model folder."""
    for name in ("a.png", "b.png"):
        png(tmp_path / "images" / name)
    cams = [ColmapCamera(1, model, W, H, params)]
    imgs = [
        ColmapImage(i + 1, np.array([1.0, 0, 0, 0]), np.array([0, 0, 3.0]), 1, n) for i, n in enumerate("ab")
    ]
    for im in imgs:
        im.name += ".png"
    out = tmp_path / "sparse" / "0"
    write_model(out, cams, imgs, np.zeros((3, 3)), binary=binary)
    return out


# ------------------------------------------------------------------------------------------ arguments


def test_missing_path_and_unknown_folder(tmp_path: Path):
    msg = raises(tmp_path / "nope.json", "does not exist")
    assert "Accepted captures" in msg
    (tmp_path / "empty").mkdir()
    assert "transforms" in raises(tmp_path / "empty", "No capture found")
    png(tmp_path / "photo.png")
    raises(tmp_path / "photo.png", "not a capture file")


def test_split_not_found_lists_what_exists(tmp_path: Path):
    path, data = transforms(tmp_path)
    path.rename(tmp_path / "transforms_val.json")
    msg = raises(tmp_path, "transforms_train.json")
    assert "transforms_val.json" in msg


def test_bad_arguments(tmp_path: Path):
    path, _ = transforms(tmp_path)
    raises(path, "either resolution or downscale", resolution=10, downscale=2)
    raises(path, "downscale must be", downscale=0.5)
    raises(path, "downscale must be", downscale=math.nan)
    raises(path, "resolution must be", resolution=0)
    raises(path, "background must be", background=(1.0, 0.0))


# ------------------------------------------------------------------------------------------ json


def test_not_json(tmp_path: Path):
    path = tmp_path / "transforms.json"
    path.write_text("{ this is not json")
    msg = raises(path, "not valid JSON")
    assert str(path) in msg and "line 1" in msg


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2], "JSON object"),
        ({"camera_angle_x": 1.0}, "no 'frames'"),
        ({"camera_angle_x": 1.0, "frames": {}}, "'frames' must be a list"),
        ({"camera_angle_x": 1.0, "frames": []}, "'frames' is empty"),
        ({"camera_angle_x": 1.0, "frames": ["x"]}, "frame 0: expected an object"),
        (
            {"camera_angle_x": 1.0, "frames": [{"transform_matrix": np.eye(4).tolist()}]},
            "missing 'file_path'",
        ),
    ],
)
def test_malformed_json(tmp_path: Path, content, match: str):
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(content))
    assert str(path) in raises(path, match)


def test_bad_transform_matrix(tmp_path: Path):
    path, data = transforms(tmp_path)
    frame = data["frames"][1]
    del frame["transform_matrix"]
    assert "frame 1 (img_1)" in raises(rewrite(path, data), "missing 'transform_matrix'")
    frame["transform_matrix"] = GL_POSE[:3].tolist()
    raises(rewrite(path, data), r"4x4.*shape \(3, 4\)")
    frame["transform_matrix"] = [[1, 2], [3]]
    raises(rewrite(path, data), "not a 4x4 list of numbers")
    bad = GL_POSE.copy()
    bad[0, 3] = math.nan
    frame["transform_matrix"] = bad.tolist()
    raises(rewrite(path, data), "NaN or infinite")
    bad[0, 3] = math.inf
    frame["transform_matrix"] = bad.tolist()
    raises(rewrite(path, data), "NaN or infinite")
    frame["transform_matrix"] = (GL_POSE @ np.diag([2.0, 2.0, 2.0, 1.0])).tolist()
    raises(rewrite(path, data), "not a proper rotation")


@pytest.mark.parametrize(
    ("top", "match"),
    [
        ({"camera_angle_x": math.nan}, "'camera_angle_x' is not finite"),
        ({"camera_angle_x": 4.0}, "between 0 and pi"),
        ({"fl_x": math.inf}, "'fl_x' is not finite"),
        ({"fl_x": 10.0, "cx": math.nan}, "'cx' is not finite"),
        ({"fl_x": -5.0}, "focal lengths must be positive"),
        ({"fl_x": "12"}, "'fl_x' must be a number"),
        ({"fl_x": 10.0, "k4": 0.1}, "k4 is not supported"),
        ({"fl_x": 10.0, "camera_model": "OPENCV_FISHEYE"}, "OPENCV_FISHEYE.*not supported"),
    ],
)
def test_bad_intrinsics(tmp_path: Path, top: dict, match: str):
    path, data = transforms(tmp_path)
    data.update(top)
    raises(rewrite(path, data), match)


def test_no_focal_length(tmp_path: Path):
    path, data = transforms(tmp_path)
    del data["camera_angle_x"]
    raises(rewrite(path, data), "no focal length")


def test_missing_image(tmp_path: Path):
    path, data = transforms(tmp_path)
    (tmp_path / "img_1.png").unlink()
    msg = raises(path, "image file not found")
    assert str(tmp_path / "img_1") in msg


def test_corrupt_images(tmp_path: Path):
    path, data = transforms(tmp_path)
    target = tmp_path / "img_1.png"
    target.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    assert str(target) in raises(path, "not a readable image")
    # a PNG cut in the middle of its pixel data: the header is fine, decoding fails
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, "PNG")
    target.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert str(target) in raises(path, "corrupt or truncated")
    # the same for a 16-bit PNG, which has its own decoder
    arr = np.random.default_rng(2).integers(0, 65536, (H, W), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    target.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert str(target) in raises(path, "corrupt PNG")
    target.write_bytes(b"")
    raises(path, "not a readable image")


def test_inconsistent_sizes(tmp_path: Path):
    path, data = transforms(tmp_path)
    png(tmp_path / "img_1.png", size=(W, H + 2))
    msg = raises(path, "same camera intrinsics")
    assert "img_1.png" in msg and f"{W}x{H + 2}" in msg and f"{W}x{H}" in msg
    # with per-frame intrinsics each frame is its own camera, so different sizes are fine
    data["frames"][1]["camera_angle_x"] = 0.7
    assert len(load_capture(rewrite(path, data)).views) == 2


def test_size_differs_from_json(tmp_path: Path):
    path, data = transforms(tmp_path, w=W, h=H)
    data["w"] = W * 2
    msg = raises(rewrite(path, data), "but the json says")
    assert f"w={W * 2}" in msg and "img_0.png" in msg


def test_exr_rejected(tmp_path: Path):
    path, data = transforms(tmp_path)
    (tmp_path / "x.exr").write_bytes(b"v/1\x01")
    data["frames"][0]["file_path"] = "x.exr"
    raises(rewrite(path, data), "not supported; use PNG or JPEG")


# ------------------------------------------------------------------------------------------ COLMAP


def test_colmap_missing_camera_id(tmp_path: Path):
    model = colmap(tmp_path, binary=False)
    text = (model / "images.txt").read_text().replace(" 1 b.png", " 9 b.png")
    (model / "images.txt").write_text(text)
    msg = raises(tmp_path, "camera id 9")
    assert "b.png" in msg and "cameras.txt" in msg


def test_colmap_missing_image_file(tmp_path: Path):
    colmap(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    assert str(tmp_path / "images" / "b.png") in raises(tmp_path, "image file not found")


def test_colmap_no_image_folder(tmp_path: Path):
    colmap(tmp_path)
    (tmp_path / "images").rename(tmp_path / "pics")
    raises(tmp_path, "Cannot find the images")
    raises(tmp_path, "does not exist", image_dir=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("FULL_OPENCV", (20.0, 20.0, 10.0, 8.0) + (0.0,) * 8),
        ("OPENCV_FISHEYE", (20.0, 20.0, 10.0, 8.0, 0.1, 0, 0, 0)),
    ],
)
def test_colmap_unsupported_model(tmp_path: Path, model: str, params: tuple):
    model_dir = colmap(tmp_path, model=model, params=params)
    msg = raises(tmp_path, f"{model} camera model")
    assert "colmap image_undistorter" in msg and "--output_type COLMAP" in msg
    assert f"--input_path {model_dir}" in msg and f"--image_path {tmp_path / 'images'}" in msg


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
def test_colmap_truncated_binary(tmp_path: Path, name: str):
    model = colmap(tmp_path)
    data = (model / name).read_bytes()
    (model / name).write_bytes(data[: len(data) - 5])
    msg = raises(tmp_path, "truncated")
    assert str(model / name) in msg


def test_colmap_count_mismatch(tmp_path: Path):
    model = colmap(tmp_path)
    data = bytearray((model / "images.bin").read_bytes())
    data[:8] = struct.pack("<Q", 1)  # header announces fewer images than the file holds
    (model / "images.bin").write_bytes(bytes(data))
    raises(tmp_path, "unexpected bytes after the 1 records")
    data[:8] = struct.pack("<Q", 5)  # ... or more
    (model / "images.bin").write_bytes(bytes(data))
    raises(tmp_path, "truncated")


def test_colmap_incomplete_model(tmp_path: Path):
    model = colmap(tmp_path)
    (model / "images.bin").unlink()
    msg = raises(tmp_path, "Incomplete COLMAP model")
    assert "cameras.bin" in msg


def test_colmap_bad_text(tmp_path: Path):
    model = colmap(tmp_path, binary=False)
    good = (model / "cameras.txt").read_text()
    (model / "cameras.txt").write_text(good.replace("PINHOLE", "WEIRD"))
    raises(tmp_path, "unknown camera model 'WEIRD'")
    (model / "cameras.txt").write_text(good.replace(" 8.0", ""))
    raises(tmp_path, "takes 4 parameters, got 3")
    (model / "cameras.txt").write_text(good.replace(" 20 ", " twenty "))
    raises(tmp_path, "line 3: cannot parse width")


def test_colmap_non_finite_pose_and_size_mismatch(tmp_path: Path):
    model = colmap(tmp_path, binary=False)
    good = (model / "images.txt").read_text()
    (model / "images.txt").write_text(good.replace("1 1.0 0.0 0.0 0.0", "1 nan 0.0 0.0 0.0", 1))
    raises(tmp_path, "not finite")
    (model / "images.txt").write_text(good)
    png(tmp_path / "images" / "a.png", size=(W, W))
    raises(tmp_path, f"is {W}x{W} but camera 1 is {W}x{H}")


def test_colmap_no_images(tmp_path: Path):
    model = colmap(tmp_path)
    write_model(model, [ColmapCamera(1, "PINHOLE", W, H, (20.0, 20.0, 10.0, 8.0))], [])
    raises(tmp_path, "no registered images")
