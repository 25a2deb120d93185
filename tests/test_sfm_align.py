"""The similarity maths of prd poses on synthetic cameras: exact recoveries, no pycolmap needed."""

from __future__ import annotations

import numpy as np
import pytest

from prd_blender.trainer.sfm.align import (
    normalising_similarity,
    pose_errors,
    rotation_between,
    similarity_matrix,
    transform_world_to_cam,
    umeyama,
)


def look_at(centre: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0), roll_deg: float = 0.0) -> np.ndarray:
    """OpenCV world-to-camera of a camera at ``centre`` looking at ``target`` with ``up`` roughly up."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, up)  # OpenCV: x right, y down, z forward
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])  # rows: camera axes in world coordinates
    if roll_deg:
        a = np.radians(roll_deg)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ rot
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = -rot @ centre
    return m


def ring_cameras(target=None, radius=3.0, elevations=(15.0, 40.0), n=12, **kw) -> list[np.ndarray]:
    target = np.zeros(3) if target is None else target
    cams = []
    for el in np.radians(elevations):
        for az in np.linspace(0, 2 * np.pi, n, endpoint=False):
            c = target + radius * np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
            cams.append(look_at(c, target, **kw))
    return cams


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    return similarity_matrix(rng.uniform(0.2, 5.0), random_rotation(rng), rng.normal(size=3) * 3)


def centres(cams: list[np.ndarray]) -> np.ndarray:
    return np.stack([-c[:3, :3].T @ c[:3, 3] for c in cams])


def test_transform_world_to_cam_keeps_projections():
    rng = np.random.default_rng(0)
    cam = ring_cameras()[3]
    sim = random_similarity(rng)
    moved = transform_world_to_cam(cam, sim)
    assert np.allclose(moved[:3, :3] @ moved[:3, :3].T, np.eye(3), atol=1e-12)
    pts = rng.normal(size=(10, 3))
    before = pts @ cam[:3, :3].T + cam[:3, 3]
    new_pts = pts @ sim[:3, :3].T + sim[:3, 3]
    after = new_pts @ moved[:3, :3].T + moved[:3, 3]
    # same image points; depths scale with the similarity
    assert np.allclose(before[:, :2] / before[:, 2:], after[:, :2] / after[:, 2:], atol=1e-10)


def test_umeyama_recovers_an_exact_similarity():
    rng = np.random.default_rng(1)
    sim = random_similarity(rng)
    src = rng.normal(size=(20, 3))
    dst = src @ sim[:3, :3].T + sim[:3, 3]
    assert np.allclose(umeyama(src, dst), sim, atol=1e-9)


def test_pose_errors_are_zero_after_an_exact_similarity():
    rng = np.random.default_rng(2)
    truth = ring_cameras()
    sim = random_similarity(rng)
    est = [transform_world_to_cam(c, sim) for c in truth]
    err = pose_errors(est, truth)
    assert err["rotation_deg"].max() < 1e-5
    assert err["centre"].max() < 1e-9
    c = centres(truth)  # radius: largest distance of a true centre from their centroid
    assert err["radius"] == pytest.approx(np.linalg.norm(c - c.mean(axis=0), axis=1).max())


def test_normalising_recovers_up_centre_and_scale_from_any_frame():
    rng = np.random.default_rng(3)
    target = np.array([0.5, -0.2, 0.3])
    truth = ring_cameras(target=target, radius=2.5)
    for _ in range(5):
        scramble = random_similarity(rng)  # what a reconstruction's arbitrary frame looks like
        est = [transform_world_to_cam(c, scramble) for c in truth]
        pts = (rng.normal(size=(50, 3)) * 0.3 + target) @ scramble[:3, :3].T + scramble[:3, 3]
        norm = normalising_similarity(est, pts, target_distance=4.0)
        assert norm.up_method == "camera_up" and norm.centre_method == "optical_axes"
        out = [transform_world_to_cam(c, norm.matrix) for c in est]
        # the whole chain truth -> normalised is a similarity that maps up to up, target to 0, radius to 4
        chain = norm.matrix @ scramble
        s = np.cbrt(np.linalg.det(chain[:3, :3]))
        assert s == pytest.approx(4.0 / 2.5)
        assert np.allclose(chain[:3, :3] / s @ [0, 0, 1], [0, 0, 1], atol=1e-9)
        assert np.allclose(chain[:3, :3] @ target + chain[:3, 3], 0, atol=1e-9)
        assert np.allclose(np.linalg.norm(centres(out), axis=1), 4.0)
        # and the recorded inverse maps back to the reconstruction's own frame
        assert np.allclose(np.array(norm.to_dict()["colmap_from_normalized"]) @ norm.matrix, np.eye(4), atol=1e-9)


def test_rolled_cameras_fall_back_to_the_camera_plane():
    rng = np.random.default_rng(4)
    truth = ring_cameras(elevations=(10.0,), n=16)
    # half the cameras held in portrait the other way: their up vectors cancel out
    truth = [transform_world_to_cam(c, np.eye(4)) for c in truth]
    rolled = []
    for i, c in enumerate(truth):
        roll = np.diag([-1.0, -1.0, 1.0, 1.0]) if i % 2 else np.eye(4)  # 180 degrees about the optical axis
        rolled.append(roll @ c)
    scramble = random_similarity(rng)
    est = [transform_world_to_cam(c, scramble) for c in rolled]
    norm = normalising_similarity(est)
    assert norm.up_method == "camera_plane"
    chain = norm.matrix @ scramble
    up = chain[:3, :3] @ [0, 0, 1] / np.cbrt(np.linalg.det(chain[:3, :3]))
    assert abs(up[2]) == pytest.approx(1.0, abs=1e-9)  # the plane's normal: up or down, not sideways


def test_forward_facing_capture_centres_on_the_points():
    cams = [look_at(np.array([x, -5.0, 0.0]), np.array([x, 0.0, 0.0])) for x in np.linspace(-1, 1, 6)]
    pts = np.random.default_rng(5).normal(size=(200, 3)) + [0.0, 2.0, 0.0]
    norm = normalising_similarity(cams, pts)
    assert norm.centre_method == "points_median"
    assert np.allclose(norm.matrix[:3, :3] @ np.median(pts, axis=0) + norm.matrix[:3, 3], 0, atol=1e-9)


def test_rotation_between_handles_opposite_vectors():
    for a, b in (([0, 0, 1], [0, 0, -1]), ([1, 0, 0], [-1, 0, 0]), ([0.3, 0.4, 0.5], [0, 1, 0])):
        r = rotation_between(np.array(a, float), np.array(b, float))
        assert np.allclose(r @ (np.array(a) / np.linalg.norm(a)), np.array(b) / np.linalg.norm(b), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
