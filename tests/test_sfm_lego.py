"""A real pycolmap run on a small lego subset (shared data beside the repository; skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.capture import load_capture
from prd_blender.trainer.capture.transforms import gl_cam_to_world_to_cv_world_to_cam
from prd_blender.trainer.pipeline import run_train
from prd_blender.trainer.sfm import poses_for_training
from prd_blender.trainer.sfm.align import pose_errors
from prd_blender.trainer.sfm.run import PosesConfig

LEGO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lego"
N_VIEWS, SIZE = 24, 320

pytestmark = pytest.mark.skipif(
    not (LEGO / "transforms_train.json").is_file(), reason=f"real lego data not found at {LEGO}"
)
pycolmap = pytest.importorskip("pycolmap")


def test_poses_of_lego_subset_match_the_truth(tmp_path):
    meta = json.loads((LEGO / "transforms_train.json").read_text())
    c2w = np.array([f["transform_matrix"] for f in meta["frames"]])
    dirs = c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True)
    # the views nearest one view (within ~50 degrees): a small, well-overlapping capture
    chosen = sorted(np.argsort(-dirs @ dirs[0])[:N_VIEWS])
    photos = tmp_path / "photos"
    photos.mkdir()
    truth = {}
    for i in chosen:
        name = f"r_{i:03d}.png"
        with Image.open(LEGO / (meta["frames"][i]["file_path"] + ".png")) as im:
            im.resize((SIZE, SIZE), Image.BOX).save(photos / name)
        truth[name] = gl_cam_to_world_to_cv_world_to_cam(np.array(meta["frames"][i]["transform_matrix"]))

    # through prd train's own first step (the CLI's path minus argument parsing); lego is rendered with a
    # perfect pinhole, and estimating only the focal length keeps this small set stable (SIMPLE_RADIAL
    # invents k1 = -0.1 on it)
    run = tmp_path / "run"
    cfg = PosesConfig(camera_model="SIMPLE_PINHOLE")
    out = poses_for_training(photos, run, overwrite=False, quiet=True, config=cfg)
    assert out == run / "sfm"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["stage"] == 0 and manifest["files"]["poses"] == "sfm/sfm.json"
    rec = json.loads((out / "sfm.json").read_text())
    # a few views at the edge of this subset overlap too little with the rest (they form their own small
    # model): they must be reported by name and moved aside, and everything else posed
    assert rec["registered"] >= 18 and rec["registered"] + len(rec["unregistered"]) == N_VIEWS
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events[0]["step"] == "photos" and events[-1]["step"] == "done"
    if rec["unregistered"]:
        warn = next(e for e in events if e["step"] == "unregistered")
        assert warn["names"] == rec["unregistered"] and all(n in warn["message"] for n in rec["unregistered"])
        assert sorted(p.name for p in (out / "unregistered").iterdir()) == rec["unregistered"]

    cap = load_capture(out, background=(1.0, 1.0, 1.0))
    assert cap.source == "colmap" and len(cap.views) == rec["registered"] and cap.points is not None
    assert sorted(p.name for p in (out / "images").iterdir()) == [v.name for v in cap.views]
    assert all(v.mask is not None for v in cap.views)  # alpha survived normalisation
    err = pose_errors([v.world_to_cam for v in cap.views], [truth[v.name] for v in cap.views])
    # looser than the benchmark's targets (0.5 degrees, 1 % of the radius on 100 views at 800 px): 21-24 views
    # at 320 px on one side of the object, and the radius here is that of the subset's cameras only
    assert np.median(err["rotation_deg"]) < 1.0
    assert np.median(err["centre"]) < 0.03 * err["radius"]
    f_true = 0.5 * SIZE / np.tan(0.5 * meta["camera_angle_x"])
    # the focal length is weakly constrained by a narrow fan of views at one distance (it trades against
    # the distance); measured 4.4 % short here, 1 % on the full 100-view benchmark
    assert cap.views[0].K[0, 0] == pytest.approx(f_true, rel=0.07)

    # normalised frame: lego's up (+Z) stays up, cameras at median distance 4 from the centre
    sim = err["similarity"]
    up = sim[:3, :3] @ [0.0, 0.0, 1.0]
    # a one-sided subset: the mean camera up leans towards the object, so only a loose bound here (the full
    # 100-view benchmark measures the up error properly)
    assert up[2] / np.linalg.norm(up) > np.cos(np.radians(30))
    assert np.median(np.linalg.norm([v.center for v in cap.views], axis=1)) == pytest.approx(4.0, rel=1e-6)
    back = np.array(rec["normalization"]["colmap_from_normalized"]) @ np.array(
        rec["normalization"]["normalized_from_colmap"])
    assert np.allclose(back, np.eye(4), atol=1e-9)

    # and the run folder trains on the poses (tiny settings: this checks the hand-over, not quality)
    done = run_train(out, run, iterations=5, resolution=32, overwrite=True, quiet=True)
    assert done["status"] == "complete" and done["capture"] == str(out.resolve())
