"""Lens distortion: point maths, image undistortion against a pinhole render, and the loaders using it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.capture import load_capture
from prd_blender.trainer.capture.colmap import ColmapCamera, ColmapImage, write_model
from prd_blender.trainer.capture.distortion import (
    as_coeffs,
    distort_points,
    undistort_image,
    undistort_map,
    undistort_points,
)

W, H = 48, 40
FX, FY, CX, CY = 40.0, 42.0, 23.5, 20.5
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
COEFFS = as_coeffs(k1=-0.2, k2=0.05, p1=0.01, p2=-0.005)


def pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth test pattern over continuous pixel coordinates (what an ideal pinhole camera sees)."""
    return 0.5 + 0.25 * np.sin(2 * np.pi * u / 13.0) * np.cos(2 * np.pi * v / 17.0) + 0.1 * (u / W)


def pixel_centres() -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:H, 0:W] + 0.5
    return u, v


def render(kmat: np.ndarray = K, coeffs: np.ndarray | None = None) -> np.ndarray:
    """What a camera records. With a lens, the pixel at distorted position p_d shows the scene at
    undistort(p_d); without one (coeffs None) this is the ideal pinhole image."""
    u, v = pixel_centres()
    if coeffs is None:
        return pattern(u, v)
    fx, fy, cx, cy = kmat[0, 0], kmat[1, 1], kmat[0, 2], kmat[1, 2]
    xy = undistort_points(np.stack([(u - cx) / fx, (v - cy) / fy], axis=-1), coeffs)
    return pattern(xy[..., 0] * fx + cx, xy[..., 1] * fy + cy)


def inside(kmat: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Output pixels whose source lies at least one pixel inside the sensor (no clamping involved)."""
    u, v = pixel_centres()
    fx, fy, cx, cy = kmat[0, 0], kmat[1, 1], kmat[0, 2], kmat[1, 2]
    xy = distort_points(np.stack([(u - cx) / fx, (v - cy) / fy], axis=-1), coeffs)
    su, sv = xy[..., 0] * fx + cx, xy[..., 1] * fy + cy
    return (su > 1) & (su < W - 1) & (sv > 1) & (sv < H - 1)


def test_points_roundtrip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.6, 0.6, size=(500, 2))
    for coeffs in (COEFFS, as_coeffs(k1=0.1, k2=-0.02, p1=-0.003, p2=0.004, k3=0.01), as_coeffs()):
        np.testing.assert_allclose(undistort_points(distort_points(xy, coeffs), coeffs), xy, atol=1e-10)
    np.testing.assert_array_equal(distort_points(xy, as_coeffs()), xy)


def test_distort_points_matches_opencv_formula():
    x, y = 0.3, -0.2
    k1, k2, p1, p2, k3 = 0.1, -0.05, 0.002, -0.003, 0.01
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    np.testing.assert_allclose(distort_points(np.array([x, y]), as_coeffs(k1, k2, p1, p2, k3)), [xd, yd])


def test_undistort_image_matches_render():
    distorted = render(K, COEFFS).astype(np.float32)
    out = undistort_image(distorted, K, COEFFS)
    truth = render()
    ok = inside(K, COEFFS)
    assert ok.mean() > 0.8
    err = np.abs(out - truth)[ok]
    assert err.max() < 0.02  # bilinear interpolation error of a smooth pattern
    # and undistorting clearly matters: the raw distorted image is far off
    assert np.abs(distorted - truth)[ok].max() > 0.1
    # barrel distortion (k1 < 0) sees more than the pinhole frame; pincushion sees less, and the
    # uncovered share of the output is reported
    assert undistort_map(W, H, K, COEFFS).outside_fraction == 0.0
    assert 0.0 < undistort_map(W, H, K, as_coeffs(k1=0.3)).outside_fraction < 0.3


def test_undistort_identity_without_distortion():
    img = np.random.default_rng(1).random((H, W, 3)).astype(np.float32)
    np.testing.assert_allclose(undistort_image(img, K, as_coeffs()), img, atol=1e-6)


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.mark.parametrize(
    ("model", "params", "coeffs"),
    [
        ("OPENCV", (FX, FY, CX, CY, -0.2, 0.05, 0.01, -0.005), COEFFS),
        ("RADIAL", (FX, CX, CY, -0.15, 0.03), as_coeffs(k1=-0.15, k2=0.03)),
        ("SIMPLE_RADIAL", (FX, CX, CY, 0.1), as_coeffs(k1=0.1)),
    ],
)
def test_colmap_distorted_models_are_undistorted(
    tmp_path: Path, model: str, params: tuple, coeffs: np.ndarray
):
    fy = FY if model == "OPENCV" else FX
    kmat = np.array([[FX, 0, CX], [0, fy, CY], [0, 0, 1.0]])
    distorted = render(kmat, coeffs)
    _save(tmp_path / "images" / "d.png", distorted)
    cam = ColmapCamera(1, model, W, H, params)
    write_model(
        tmp_path / "sparse" / "0", [cam], [ColmapImage(1, np.array([1.0, 0, 0, 0]), np.zeros(3), 1, "d.png")]
    )
    cap = load_capture(tmp_path)
    assert cap.meta["undistorted"] is True
    assert cap.meta["camera_models"] == [model]
    view = cap.views[0]
    np.testing.assert_allclose(view.K, kmat)  # same K, distortion removed
    truth = render(kmat)
    ok = inside(kmat, coeffs)
    assert np.abs(view.image[..., 0] - truth)[ok].max() < 0.025  # + 8-bit quantisation


def test_nerfstudio_distortion_is_undistorted(tmp_path: Path):
    _save(tmp_path / "d.png", render(K, COEFFS))
    c2w = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL camera at the origin == OpenCV identity
    data = {"fl_x": FX, "fl_y": FY, "cx": CX, "cy": CY, "w": W, "h": H, "k1": -0.2, "k2": 0.05}
    data.update({"p1": 0.01, "p2": -0.005, "camera_model": "OPENCV"})
    data["frames"] = [{"file_path": "d.png", "transform_matrix": c2w.tolist()}]
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    cap = load_capture(tmp_path)
    assert cap.meta["undistorted"] is True
    view = cap.views[0]
    np.testing.assert_allclose(view.K, K)
    np.testing.assert_allclose(view.world_to_cam, np.eye(4), atol=1e-12)
    ok = inside(K, COEFFS)
    assert np.abs(view.image[..., 1] - render())[ok].max() < 0.025
    # undistortion happens before downscaling, so K and pixels still agree after it
    small = load_capture(tmp_path, downscale=2).views[0]
    np.testing.assert_allclose(small.K, np.diag([0.5, 0.5, 1.0]) @ K)
    v, u = np.mgrid[0 : H // 2, 0 : W // 2] + 0.5
    coarse_truth = pattern(u * 2, v * 2)
    centre = (slice(5, -5), slice(5, -5))
    assert np.abs(small.image[..., 0] - coarse_truth)[centre].mean() < 0.02
