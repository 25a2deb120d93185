"""Checks of the bundled sample capture (NeRF Synthetic layout) and of the script that renders it.

The bundled-sample checks need only numpy + Pillow: the trainer's test environment does not have
bpy. The regeneration test runs only where bpy is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sample_capture"
SCRIPT = REPO / "scripts" / "make_sample_capture.py"


def check_capture(root: Path, n_train: int, n_test: int, size: int) -> None:
    """Assert that ``root`` is a well-formed NeRF-Synthetic-style RGBA capture."""
    for split, n in (("train", n_train), ("test", n_test)):
        meta = json.loads((root / f"transforms_{split}.json").read_text())
        fov = meta["camera_angle_x"]
        assert 0.1 < fov < 2.0, fov
        frames = meta["frames"]
        assert len(frames) == n
        # Every frame's image exists and there are no stray images.
        assert len(list((root / split).glob("*.png"))) == n
        for frame in frames:
            fp = frame["file_path"]
            assert fp.startswith(f"{split}/") and not fp.endswith(".png")  # NeRF-synthetic style
            with Image.open(root / f"{fp}.png") as im:
                assert im.mode == "RGBA" and im.size == (size, size)
                alpha = np.asarray(im)[..., 3]
            # Object and transparent background both present, object not touching most of the border.
            obj = (alpha > 127).mean()
            assert 0.05 < obj < 0.8, (fp, obj)
            border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
            assert (border == 0).mean() > 0.9, fp

            m = np.asarray(frame["transform_matrix"], dtype=np.float64)
            assert m.shape == (4, 4) and np.isfinite(m).all()
            np.testing.assert_allclose(m[3], [0, 0, 0, 1], atol=1e-6)
            rot, pos = m[:3, :3], m[:3, 3]
            np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-4)  # rigid, no scale
            assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-4)  # proper rotation
            # OpenGL/Blender camera axes: the camera looks down its -Z axis, which must aim at the origin.
            forward = -rot[:, 2]
            to_origin = -pos / np.linalg.norm(pos)
            angle = np.degrees(np.arccos(np.clip(forward @ to_origin, -1.0, 1.0)))
            assert angle < 3.0, (fp, angle)


def test_bundled_sample_capture() -> None:
    readme = (SAMPLE / "README.md").read_text()
    assert "make_sample_capture.py" in readme
    check_capture(SAMPLE, n_train=48, n_test=8, size=128)


def test_bundled_sample_cameras_are_distinct_and_surround_object() -> None:
    pos = []
    for split in ("train", "test"):
        meta = json.loads((SAMPLE / f"transforms_{split}.json").read_text())
        pos += [np.asarray(f["transform_matrix"])[:3, 3] for f in meta["frames"]]
    pos = np.asarray(pos)
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos)) * 1e9
    assert dist.min() > 0.1  # no duplicated viewpoints (test views differ from train views)
    assert (pos[:, 2] < 0).any() and (pos[:, 2] > 0).mean() > 0.5  # mostly above, some below horizon
    assert np.ptp(pos[:, 0]) > 4 and np.ptp(pos[:, 1]) > 4  # all around the object


def test_script_regenerates_capture(tmp_path: Path) -> None:
    pytest.importorskip("bpy")
    out = tmp_path / "capture"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--views", "3", "--test-views", "1"]
    cmd += ["--size", "32", "--samples", "4"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    check_capture(out, n_train=3, n_test=1, size=32)
    assert "--views 3" in (out / "README.md").read_text()
