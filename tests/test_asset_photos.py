"""``prd bench asset``: held-out cameras for Cycles, the per-view scores, and a tiny run end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prd_blender.trainer.asset.photo_bench import score_view
from prd_blender.trainer.asset.render_cycles import cycles_transforms
from prd_blender.trainer.capture import load_capture

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sample_capture"


def test_cycles_cameras_are_the_captures_blender_cameras(tmp_path):
    # The capture loader turns Blender cameras into OpenCV ones; the benchmark must turn them back exactly,
    # or Cycles renders the asset from somewhere else than the photo was taken.
    cap = load_capture(SAMPLE, resolution=32)
    _, test = cap.split(8)
    tf = json.loads(cycles_transforms(test, tmp_path / "t.json").read_text())
    src = json.loads((SAMPLE / "transforms_train.json").read_text())
    by_name = {Path(f["file_path"]).stem: f["transform_matrix"] for f in src["frames"]}
    assert len(tf["frames"]) == len(test) > 0
    for f in tf["frames"]:
        np.testing.assert_allclose(f["transform_matrix"], by_name[Path(f["file_path"]).stem], atol=1e-6)
    assert math.isclose(tf["camera_angle_x"], src["camera_angle_x"], rel_tol=1e-6)


def test_cycles_cameras_refuse_what_one_job_cannot_reproduce(tmp_path):
    cap = load_capture(SAMPLE, resolution=32)
    v = cap.views[0]
    K = v.K.copy()
    K[0, 2] += 3
    with pytest.raises(ValueError, match="principal point"):
        cycles_transforms([replace(v, K=K)], tmp_path / "t.json")
    with pytest.raises(ValueError, match="no views"):
        cycles_transforms([], tmp_path / "t.json")


def test_scores_of_one_view():
    rng = np.random.default_rng(0)
    photo_lin = rng.uniform(0.05, 0.8, (16, 16, 3)).astype(np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1
    bg = np.ones(3, np.float32)
    srgb = np.where(photo_lin <= 0.0031308, 12.92 * photo_lin, 1.055 * photo_lin ** (1 / 2.4) - 0.055)
    photo = srgb * mask[..., None] + (1 - mask[..., None]) * bg
    same = score_view(photo_lin, mask, photo, mask, bg, "srgb")
    assert same["image_psnr"] > 60 and same["object_psnr"] > 60 and same["iou"] == 1.0
    # half the exposure: the plain scores drop, the scale fit recovers it
    dark = score_view(photo_lin * 0.5, mask, photo, mask, bg, "srgb")
    assert dark["object_psnr"] < 25 and dark["object_psnr_fit"] > 45
    # the object drawn one pixel too wide on each side: only the silhouette and the whole image suffer
    wide = np.zeros_like(mask)
    wide[3:13, 3:13] = 1
    shifted = score_view(photo_lin, wide, photo, mask, bg, "srgb")
    assert math.isclose(shifted["iou"], 64 / 100) and shifted["object_psnr"] > 60 and shifted["image_psnr"] < 30


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy not installed")
def test_bench_asset_on_a_tiny_run(tmp_path):
    from test_distill import configs

    from prd_blender.trainer.asset import bake_asset
    from prd_blender.trainer.pipeline import run_train

    s1, d = configs()
    out = tmp_path / "run"
    run_train(SAMPLE, out, resolution=32, hold_out_every=8, config=s1, distill=d, quiet=True)
    # before prd mesh: a clear error, exit code 2 (bad input), nothing rendered
    cmd = [sys.executable, "-m", "prd_blender.trainer", "bench", "asset", str(out), "--samples", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "prd mesh" in proc.stderr
    bake_asset(out, "preview", 256, device="cpu", grid=48, render=64, faces=2000, extra_views=8)
    record = tmp_path / "asset.json"
    proc = subprocess.run([*cmd, "--json", str(record)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(record.read_text())
    assert rec["views"] == 6 and rec["size"] == 32 and rec["machine"]["cores"]
    for name in ("asset", "gaussians_phy", "gaussians_blend"):
        m = rec["means"][name]
        assert len(rec["per_view"][name]) == 6
        assert 8 < m["object_psnr"] < 60 and m["object_psnr"] <= m["object_psnr_fit"] + 0.5
        assert 0.1 < m["iou"] <= 1, name  # 30 iterations of stage 1 leave a haze around the object
    # The asset is drawn where its Gaussians are: the held-out cameras reach Cycles unchanged
    assert rec["means"]["asset"]["iou_gaussians"] > 0.9
    assert (out / "bench_asset" / "recovered" / f"{Path(rec['per_view']['asset'][0]['view']).stem}.exr").is_file()
    assert "whole image dB" in proc.stdout


def test_log_ratio_keeps_the_inside_of_the_object_and_clips():
    from prd_blender.trainer.asset.refine import MAX_STEP_RATIO, log_ratio

    render = np.zeros((12, 12, 4))
    render[2:10, 2:10] = [0.2, 0.2, 0.2, 1.0]
    photo = np.full((12, 12, 3), 0.4)
    photo[5, 5] = 100.0  # a highlight the render cannot have: clipped, not trusted
    mask = np.zeros((12, 12))
    mask[2:10, 2:8] = 1
    lr, valid = log_ratio(photo, mask, render)
    assert valid.sum() == 6 * 4  # both silhouettes, each eroded by one pixel
    assert not valid[2].any() and not valid[:, 7].any()
    np.testing.assert_allclose(lr[4, 4], np.log(0.401 / 0.201), rtol=1e-9)
    assert np.isclose(lr[5, 5, 0], np.log(MAX_STEP_RATIO)) and (lr[~valid] == 0).all()


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy not installed")
def test_refinement_recovers_a_darkened_albedo(tmp_path):
    # Known answer: "photos" are Cycles renders of the baked asset itself; the asset's albedo is then halved,
    # and refining through Cycles must bring it back.
    import dataclasses

    from PIL import Image

    from prd_blender.trainer.asset import bake_asset
    from prd_blender.trainer.asset.bench import read_render
    from prd_blender.trainer.asset.gltf import write_glb
    from prd_blender.trainer.asset.refine import read_uv_mesh, refine_albedo
    from prd_blender.trainer.asset.render_cycles import render_glb
    from prd_blender.trainer.asset.synthetic import sphere_gaussians, write_run_folder
    from prd_blender.trainer.outputs import update_manifest
    from prd_blender.trainer.shading.hdr_io import write_exr
    from prd_blender.trainer.train.distill import DistillConfig

    out = write_run_folder(tmp_path / "run", sphere_gaussians(radius=0.5, metallic=0.0))
    bake_asset(out, "preview", 256, device="cpu", grid=48, render=64, faces=2000, extra_views=8)
    elev = np.linspace(0, 1, 32)[:, None, None]
    sky = np.broadcast_to(0.3 + 1.2 * elev * np.array([0.9, 1.0, 1.1]), (32, 64, 3)).copy()  # brighter at the top
    write_exr(out / "environment.exr", sky)
    update_manifest(out, files={"environment": "environment.exr"})
    frames = []
    for i, a in enumerate(np.linspace(0, 2 * np.pi, 12, endpoint=False)):
        eye = np.array([3 * np.cos(a), 3 * np.sin(a), 1.2 * (-1) ** i])
        z = eye / np.linalg.norm(eye)  # Blender camera: looks down -Z, so +Z points back at the eye
        x = np.cross([0.0, 0.0, 1.0], z)
        x /= np.linalg.norm(x)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
        c2w[:3, 3] = eye
        frames.append({"file_path": f"train/r_{i:03d}", "transform_matrix": c2w.tolist()})
    capture = tmp_path / "capture"
    (capture / "train").mkdir(parents=True)
    tf = {"camera_angle_x": 0.6, "frames": frames}
    (capture / "transforms_train.json").write_text(json.dumps(tf))
    light = [{"name": "env", "file": str(out / "environment.exr"), "strength": 1.0}]
    render_glb(out / "mesh.glb", capture / "transforms_train.json", list(range(12)), light, tmp_path / "truth",
               size=32, samples=16)
    for f in frames:
        rgba = read_render(tmp_path / "truth" / "env" / f"{Path(f['file_path']).name}.exr")
        lin = np.clip(rgba[..., :3], 0, 1)
        srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
        px = np.concatenate([srgb, rgba[..., 3:]], -1)
        Image.fromarray(np.round(px * 255).astype(np.uint8), "RGBA").save(capture / f"{f['file_path']}.png")
    (out / "run.json").write_text(json.dumps({"capture": str(capture), "resolution": 32, "downscale": None,
                                              "background": None, "hold_out_every": 0,
                                              "distill": dataclasses.asdict(DistillConfig())}))
    truth = np.asarray(Image.open(out / "mesh_albedo.png").convert("RGB"), np.float64) / 255
    dark = ((truth ** 2.2) * 0.5) ** (1 / 2.2)  # half the linear albedo (gamma 2.2 is close enough for a test)
    Image.fromarray(np.round(dark * 255).astype(np.uint8), "RGB").save(out / "mesh_albedo.png")
    write_glb(out / "mesh.glb", read_uv_mesh(out / "mesh.ply"), {r: out / f for r, f in (
        ("texture_albedo", "mesh_albedo.png"), ("texture_orm", "mesh_orm.png"), ("texture_normal", "mesh_normal.png"))})
    res = refine_albedo(out, steps=2, samples=16)
    err = [h["mean_abs_log_ratio"] for h in res["history"]]
    assert err[0] > 0.4 and err[-1] < 0.25 * err[0], err  # the renders come back to the "photos"
    refined = np.asarray(Image.open(out / "mesh_albedo.png").convert("RGB"), np.float64) / 255
    seen = refined.sum(-1) > 0.05
    ratio = np.median((refined[seen] ** 2.2).sum(-1) / np.maximum((truth[seen] ** 2.2).sum(-1), 1e-3))
    assert 0.85 < ratio < 1.15, ratio  # halved -> back to the truth
    assert json.loads((out / "manifest.json").read_text())["asset"]["refine"]["steps"] == 2
    # only the final renders stay
    assert not (out / "refine" / "step0").exists()
    assert len(list((out / "refine" / "step2" / "recovered").iterdir())) == 12


def test_mesh_asks_for_a_refinement_without_blender_fails_before_baking(tmp_path, monkeypatch, capsys):
    from prd_blender.trainer import cli
    from prd_blender.trainer.asset import render_cycles
    from prd_blender.trainer.asset.synthetic import sphere_gaussians, write_run_folder

    def no_blender():
        raise render_cycles.CyclesUnavailable("no Blender here")

    monkeypatch.setattr(render_cycles, "renderer_command", no_blender)
    out = write_run_folder(tmp_path / "run", sphere_gaussians(radius=0.5))
    assert cli.main(["mesh", str(out), "--quality", "preview", "--refine-steps", "2"]) == 2
    assert "needs Blender" in capsys.readouterr().err and not (out / "mesh.glb").exists()
