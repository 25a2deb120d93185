"""The real NeRF Synthetic lego train split (shared data beside the repository; skipped when absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from prd_blender.trainer.capture import load_capture

LEGO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lego"

pytestmark = pytest.mark.skipif(
    not (LEGO / "transforms_train.json").is_file(), reason=f"real lego data not found at {LEGO}"
)


def test_lego_downscaled():
    meta = json.loads((LEGO / "transforms_train.json").read_text())
    cap = load_capture(LEGO, downscale=8)
    assert cap.source == "nerf_synthetic"
    assert len(cap.views) == 100
    assert cap.background == (1.0, 1.0, 1.0)
    f = 0.5 * 100 / math.tan(0.5 * meta["camera_angle_x"])
    for view, frame in zip(cap.views, meta["frames"], strict=True):
        assert view.image.shape == (100, 100, 3) and view.image.dtype == np.float32
        assert view.mask is not None and view.mask.shape == (100, 100)
        np.testing.assert_allclose(view.K, [[f, 0, 50], [0, f, 50], [0, 0, 1]], rtol=1e-9)
        np.testing.assert_allclose(view.center, np.array(frame["transform_matrix"])[:3, 3], atol=1e-6)
    view = cap.views[0]
    assert view.name == "train/r_0.png"
    # background pixels are white, the object is opaque and partly covers the frame
    assert 0.05 < (view.mask > 0.99).mean() < 0.9
    np.testing.assert_allclose(view.image[view.mask < 0.01], 1.0, atol=0.02)
    # lego sits at the world origin: it projects to the image centre, in front of the camera, on the object
    for view in cap.views[::10]:
        p = view.world_to_cam @ np.array([0.0, 0.0, 0.0, 1.0])
        assert p[2] > 0
        u, v = (view.K @ p[:3])[:2] / p[2]
        assert abs(u - 50) < 1 and abs(v - 50) < 1
        assert view.mask[int(v), int(u)] > 0.5
