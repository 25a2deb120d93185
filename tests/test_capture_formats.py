"""Round trips through every capture format: known cameras and pixels in, the same cameras and pixels out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.capture import Capture, load_capture
from prd_blender.trainer.capture.colmap import ColmapCamera, ColmapImage, rotmat_to_qvec, write_model

W, H = 24, 16  # deliberately not square, so width/height swaps show up
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


def look_at_w2c(centre, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """World-to-camera, OpenCV axes, world Z up."""
    centre = np.asarray(centre, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - centre
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd], axis=1)  # camera-to-world columns
    w2c = np.eye(4)
    w2c[:3, :3] = rot.T
    w2c[:3, 3] = -rot.T @ centre
    return w2c


def rig(n: int = 4) -> list[np.ndarray]:
    return [
        look_at_w2c([4 * math.cos(a), 4 * math.sin(a), 1.0 + 0.3 * i], [0.1, -0.2, 0.05])
        for i, a in enumerate(np.linspace(0.3, 5.5, n))
    ]


def project(K: np.ndarray, w2c: np.ndarray, X) -> np.ndarray:
    p = w2c @ np.append(np.asarray(X, dtype=np.float64), 1.0)
    uvw = K @ p[:3]
    return uvw[:2] / uvw[2]


def images(n: int, channels: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(H, W, channels), dtype=np.uint8) for _ in range(n)]


def gl_c2w(w2c: np.ndarray) -> list[list[float]]:
    return (np.linalg.inv(w2c) @ FLIP).tolist()


POINT = np.array([0.3, 0.2, -0.1])


# ------------------------------------------------------------------------------------------ transforms


def test_nerf_synthetic_rgba_roundtrip(tmp_path: Path):
    poses, pix = rig(), images(4, 4)
    angle = 0.9
    frames = []
    for i, (w2c, arr) in enumerate(zip(poses, pix, strict=True)):
        (tmp_path / "train").mkdir(exist_ok=True)
        Image.fromarray(arr, "RGBA").save(tmp_path / "train" / f"r_{i}.png")
        frames.append({"file_path": f"./train/r_{i}", "rotation": 0.0, "transform_matrix": gl_c2w(w2c)})
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))

    cap = load_capture(tmp_path)  # folder form picks transforms_train.json
    assert cap.source == "nerf_synthetic"
    assert cap.background == (1.0, 1.0, 1.0)  # RGBA NeRF Synthetic -> white
    assert [v.name for v in cap.views] == [f"train/r_{i}.png" for i in range(4)]
    f = 0.5 * W / math.tan(0.5 * angle)
    for v, w2c, arr in zip(cap.views, poses, pix, strict=True):
        np.testing.assert_allclose(v.K, [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], rtol=1e-12)
        np.testing.assert_allclose(v.world_to_cam, w2c, atol=1e-12)
        a = arr[..., 3:].astype(np.float32) / 255
        expected = arr[..., :3] / 255 * a + (1 - a)  # composited over white
        np.testing.assert_allclose(v.image, expected, atol=1e-6)
        np.testing.assert_allclose(v.mask, a[..., 0], atol=1e-7)
        assert v.image.dtype == np.float32 and v.mask.dtype == np.float32


def test_nerf_synthetic_hand_built_opengl_pose(tmp_path: Path):
    """Independent check of the OpenGL -> OpenCV flip with a pose written out by hand.

    Camera at (0, -4, 0) looking along +y with z up: OpenGL axes are x = right = +X, y = up = +Z,
    z = backwards = -Y. A point right of and above the target must land right of and above the centre.
    """
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img.png")
    c2w = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]]
    data = {"camera_angle_x": 1.0, "frames": [{"file_path": "img.png", "transform_matrix": c2w}]}
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    view = load_capture(tmp_path / "transforms.json").views[0]
    f = 0.5 * W / math.tan(0.5)
    u, v = project(view.K, view.world_to_cam, [0.5, 0.0, 0.25])
    assert u == pytest.approx(W / 2 + f * 0.5 / 4)
    assert v == pytest.approx(H / 2 - f * 0.25 / 4)
    np.testing.assert_allclose(view.center, [0, -4, 0], atol=1e-12)


def test_camera_angle_y_and_white_background_key(tmp_path: Path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    c2w = gl_c2w(rig(1)[0])
    data = {
        "camera_angle_x": 1.0,
        "camera_angle_y": 0.5,
        "white_background": True,
        "frames": [{"file_path": "a", "transform_matrix": c2w}],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    cap = load_capture(tmp_path)
    assert cap.background == (1.0, 1.0, 1.0)
    K = cap.views[0].K
    assert K[0, 0] == pytest.approx(0.5 * W / math.tan(0.5))
    assert K[1, 1] == pytest.approx(0.5 * H / math.tan(0.25))
    assert cap.views[0].mask is None
    # an explicit background wins over everything
    assert load_capture(tmp_path, background=(0.2, 0.3, 0.4)).background == (0.2, 0.3, 0.4)


def test_nerfstudio_per_frame_intrinsics(tmp_path: Path):
    poses, pix = rig(3), images(3, 3, seed=1)
    frames = []
    for i, (w2c, arr) in enumerate(zip(poses, pix, strict=True)):
        Image.fromarray(arr).save(tmp_path / f"frame_{i}.png")
        frames.append({"file_path": f"frame_{i}.png", "transform_matrix": gl_c2w(w2c)})
    frames[1].update({"fl_x": 30.0, "fl_y": 31.0, "cx": 11.0, "cy": 7.5})  # overrides top level
    frames[2].update({"cy": 9.0})  # partial override keeps the other top-level values
    data = {"fl_x": 20.0, "fl_y": 21.0, "cx": 12.5, "cy": 8.25, "w": W, "h": H, "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(data))

    cap = load_capture(tmp_path)
    assert cap.source == "nerfstudio"
    assert cap.background == (0.0, 0.0, 0.0)
    assert cap.meta["undistorted"] is False
    expected_K = [(20, 21, 12.5, 8.25), (30, 31, 11, 7.5), (20, 21, 12.5, 9.0)]
    for v, w2c, arr, (fx, fy, cx, cy) in zip(cap.views, poses, pix, expected_K, strict=True):
        np.testing.assert_allclose(v.K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        np.testing.assert_allclose(v.world_to_cam, w2c, atol=1e-12)
        np.testing.assert_allclose(v.image, arr / 255, atol=1e-6)
        assert v.mask is None


# ------------------------------------------------------------------------------------------ COLMAP


def write_colmap_capture(root: Path, *, binary: bool, layout: str = "sparse/0", seed: int = 2):
    """Project folder with images/ and a model; returns (poses by name, K by name, pixels, points)."""
    poses, pix = rig(3), images(3, 3, seed=seed)
    names = ["c.png", "a.png", "sub/b.png"]  # unsorted on purpose, one in a subfolder
    cameras = [
        ColmapCamera(1, "PINHOLE", W, H, (20.0, 22.0, 12.25, 7.75)),
        ColmapCamera(7, "SIMPLE_PINHOLE", W, H, (25.0, 11.5, 8.5)),
    ]
    Ks = {
        1: np.array([[20, 0, 12.25], [0, 22, 7.75], [0, 0, 1.0]]),
        7: np.array([[25, 0, 11.5], [0, 25, 8.5], [0, 0, 1.0]]),
    }
    cam_of = [1, 7, 1]
    imgs = []
    for i, (name, w2c, arr) in enumerate(zip(names, poses, pix, strict=True)):
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        imgs.append(ColmapImage(10 + i, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], cam_of[i], name))
    pts = np.array([[0.0, 0.1, 0.2], [1.0, -1.0, 0.5], [-0.3, 0.3, 0.9]])
    cols = np.array([[255, 0, 10], [0, 128, 255], [1, 2, 3]], np.uint8)
    write_model(root / layout, cameras, imgs, pts, cols, binary=binary)
    truth = {name: (w2c, Ks[c], arr) for name, w2c, c, arr in zip(names, poses, cam_of, pix, strict=True)}
    return truth, pts, cols


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("layout", ["sparse/0", "sparse"])
def test_colmap_roundtrip(tmp_path: Path, binary: bool, layout: str):
    truth, pts, cols = write_colmap_capture(tmp_path, binary=binary, layout=layout)
    cap = load_capture(tmp_path)
    assert cap.source == "colmap"
    assert cap.meta["format"] == ("colmap_binary" if binary else "colmap_text")
    assert cap.meta["image_path"] == str(tmp_path / "images")
    assert [v.name for v in cap.views] == ["a.png", "c.png", "sub/b.png"]  # sorted by name
    for v in cap.views:
        w2c, K, arr = truth[v.name]
        np.testing.assert_allclose(v.K, K)
        np.testing.assert_allclose(v.world_to_cam, w2c, atol=1e-10)
        np.testing.assert_allclose(v.image, arr / 255, atol=1e-6)
        assert v.mask is None
    np.testing.assert_allclose(cap.points, pts, atol=1e-6)
    np.testing.assert_allclose(cap.point_colors, cols / 255, atol=1e-6)
    assert cap.points.dtype == np.float32 and cap.point_colors.dtype == np.float32
    # the model folder itself, and one of its files, are accepted too
    model = tmp_path / layout
    assert [v.name for v in load_capture(model).views] == [v.name for v in cap.views]
    ext = ".bin" if binary else ".txt"
    assert len(load_capture(model / f"cameras{ext}").views) == 3


def test_colmap_text_written_by_hand(tmp_path: Path):
    """A text model typed out as COLMAP writes it: comments, an empty keypoint line, a filled one."""
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    (tmp_path / "images").mkdir()
    for name in ("P1.JPG", "P2.JPG"):
        Image.fromarray(np.full((H, W, 3), 77, np.uint8)).save(tmp_path / "images" / name, format="PNG")
    (model / "cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n"
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        "# Number of cameras: 1\n"
        f"3 PINHOLE {W} {H} 30 31 12 8\n"
    )
    # image 1: identity rotation, camera 2 units behind the origin; image 2: 90 deg about z
    s = math.sqrt(0.5)
    (model / "images.txt").write_text(
        "# Image list with two lines of data per image:\n"
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
        "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
        "2 1 0 0 0 0 0 2 3 P1.JPG\n"
        "\n"
        f"1 {s} 0 0 {s} 0.5 0 3 3 P2.JPG\n"
        "1.5 2.5 -1 3.5 4.5 1\n"
    )
    (model / "points3D.txt").write_text(
        "# 3D point list with one line of data per point:\n1 0.1 0.2 0.3 255 0 0 0.5 2 0 1 1\n"
    )
    cap = load_capture(tmp_path)
    assert [v.name for v in cap.views] == ["P1.JPG", "P2.JPG"]
    v1, v2 = cap.views
    np.testing.assert_allclose(v1.world_to_cam, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]])
    np.testing.assert_allclose(v2.world_to_cam[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(v2.world_to_cam[:3, 3], [0.5, 0, 3])
    # the world origin projects to the principal point of camera 1, offset by t in camera 2
    np.testing.assert_allclose(project(v1.K, v1.world_to_cam, [0, 0, 0]), [12, 8])
    np.testing.assert_allclose(project(v2.K, v2.world_to_cam, [0, 0, 0]), [12 + 30 * 0.5 / 3, 8])
    np.testing.assert_allclose(cap.points, [[0.1, 0.2, 0.3]], rtol=1e-6)
    np.testing.assert_allclose(cap.point_colors, [[1, 0, 0]])


def test_projection_agrees_across_formats(tmp_path: Path):
    """The same camera written in each format maps a 3D point to the same pixel."""
    w2c = rig(1)[0]
    fx, fy, cx, cy = 21.0, 21.0, W / 2, H / 2
    arr = np.zeros((H, W, 3), np.uint8)
    # NeRF Synthetic (camera_angle_x giving the same fx)
    d1 = tmp_path / "synthetic"
    d1.mkdir()
    Image.fromarray(arr).save(d1 / "x.png")
    angle = 2 * math.atan(0.5 * W / fx)
    (d1 / "transforms.json").write_text(
        json.dumps({"camera_angle_x": angle, "frames": [{"file_path": "x", "transform_matrix": gl_c2w(w2c)}]})
    )
    # nerfstudio
    d2 = tmp_path / "ns"
    d2.mkdir()
    Image.fromarray(arr).save(d2 / "x.png")
    ns = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": W, "h": H}
    ns["frames"] = [{"file_path": "x.png", "transform_matrix": gl_c2w(w2c)}]
    (d2 / "transforms.json").write_text(json.dumps(ns))
    # COLMAP binary and text
    caps: list[Capture] = [load_capture(d1), load_capture(d2)]
    for binary in (True, False):
        d = tmp_path / f"colmap_{binary}"
        (d / "images").mkdir(parents=True)
        Image.fromarray(arr).save(d / "images" / "x.png")
        cam = ColmapCamera(1, "PINHOLE", W, H, (fx, fy, cx, cy))
        write_model(
            d / "sparse" / "0",
            [cam],
            [ColmapImage(1, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], 1, "x.png")],
            binary=binary,
        )
        caps.append(load_capture(d))
    expected = project(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), w2c, POINT)
    assert 0 < expected[0] < W and 0 < expected[1] < H
    for cap in caps:
        v = cap.views[0]
        np.testing.assert_allclose(project(v.K, v.world_to_cam, POINT), expected, atol=1e-9)


# ------------------------------------------------------------------------------------------ detection


def test_folder_prefers_transforms_json(tmp_path: Path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    c2w = gl_c2w(rig(1)[0])
    one = {"camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": c2w}]}
    two = {"camera_angle_x": 1.0, "frames": [one["frames"][0]] * 2}
    (tmp_path / "transforms.json").write_text(json.dumps(one))
    (tmp_path / "transforms_train.json").write_text(json.dumps(two))
    (tmp_path / "transforms_test.json").write_text(json.dumps(two))
    assert len(load_capture(tmp_path).views) == 1
    (tmp_path / "transforms.json").unlink()
    assert len(load_capture(tmp_path).views) == 2
    assert len(load_capture(tmp_path, split="test").views) == 2
    assert len(load_capture(tmp_path / "transforms_test.json").views) == 2


def test_colmap_image_dir_argument_and_meta(tmp_path: Path):
    write_colmap_capture(tmp_path, binary=True)
    (tmp_path / "images").rename(tmp_path / "photos")
    cap = load_capture(tmp_path, image_dir=tmp_path / "photos")
    assert cap.meta["image_path"] == str(tmp_path / "photos")
    assert cap.meta["camera_models"] == ["PINHOLE", "SIMPLE_PINHOLE"]
    assert len(cap.views) == 3


def test_colmap_images_resized_after_reconstruction(tmp_path: Path):
    """images_2-style folders: the same aspect ratio at another size rescales K."""
    truth, _, _ = write_colmap_capture(tmp_path, binary=True)
    small = tmp_path / "images_2"
    for name in truth:
        (small / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(tmp_path / "images" / name).resize((W // 2, H // 2)).save(small / name)
    cap = load_capture(tmp_path, image_dir=small)
    for v in cap.views:
        np.testing.assert_allclose(v.K[:2], truth[v.name][1][:2] / 2)
        assert v.image.shape == (H // 2, W // 2, 3)
    assert sorted(cap.meta["rescaled_to_image_size"]) == sorted(truth)
