"""Stages 2-4 end to end on the sample capture at 32 px: outputs, stage-to-stage resume, relight."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prd_blender.trainer.asset.surface import look_at_camera
from prd_blender.trainer.pipeline import run_train
from prd_blender.trainer.shading.brdf_lut import get_brdf_lut
from prd_blender.trainer.shading.envmap import EnvironmentLight
from prd_blender.trainer.shading.hdr_io import read_exr, write_exr
from prd_blender.trainer.train.background import paired_backgrounds, random_background
from prd_blender.trainer.train.densify import DensifyStrategy
from prd_blender.trainer.train.distill import (
    DistillConfig,
    _optimizers,
    _set_stage_lrs,
    composite,
    distill_loss,
    shade_maps,
    view_backgrounds,
)
from prd_blender.trainer.train.gaussians import Gaussians
from prd_blender.trainer.train.losses import AlbedoOrientation, depth_distortion, edge_aware_smoothness, flatten_loss
from prd_blender.trainer.train.stage1 import Stage1Config

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sample_capture"
HDRI_DIR = REPO.parent / "shared" / "data" / "hdri"


def configs(stage_iters: int = 8) -> tuple[Stage1Config, DistillConfig]:
    s1 = Stage1Config(
        iterations=30, init_random=1500, sh_every=10, checkpoint_every=10, log_every=5,
        densify=DensifyStrategy(start=10, every=10, reset_every=1000, stop=25),
    )
    d = DistillConfig(
        stage2=stage_iters, stage3=stage_iters, stage4=stage_iters, light_resolution=16, visibility_resolution=24,
        propagate_every=5, propagate_hold=2, checkpoint_every=5, log_every=2, orient_every=4,
    )
    return s1, d


def test_four_stages_write_every_output(tmp_path):
    s1, d = configs()
    out = tmp_path / "run"
    m = run_train(SAMPLE, out, resolution=32, hold_out_every=8, config=s1, distill=d, quiet=True)
    assert m["status"] == "complete" and m["stage"] == 4
    for role in ("gaussians", "environment", "visibility", "maps", "eval", "cameras"):
        assert (out / m["files"][role]).is_file(), role
    model = Gaussians.load_ply(out / "point_cloud.ply")
    assert model.has_pbr and len(model) == m["result"]["gaussians"]
    for k in ("albedo", "roughness", "metallic", "progress"):
        v = model.pbr(k)
        v = v.detach()
        assert torch.isfinite(v).all() and float(v.min()) >= 0 and float(v.max()) <= 1
    env = read_exr(out / "environment.exr")
    assert env.shape == (256, 512, 3) and np.isfinite(env).all() and env.min() > 0
    maps = json.loads((out / "maps.json").read_text())["views"]
    assert len(maps) == 6
    for f in maps[0]["files"].values():
        img = Image.open(out / f)
        assert img.size == (32, 32)
    log = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    stages = {e["stage"] for e in log if e["event"] == "progress"}
    assert stages == {1, 2, 3, 4}
    assert any(e["event"] == "visibility" for e in log)
    assert [e["iteration"] for e in log if e["event"] == "orient"] == [31 + 4 * k for k in range(6)]
    assert model.oriented  # the PLY says the normals carry their voted sign
    ev = json.loads((out / "eval.json").read_text())
    assert 5 < ev["psnr"] < 60


@pytest.mark.parametrize(("orientation", "random_background"), [(0.0, False), (1.0, False), (0.0, True)])
def test_stage_to_stage_resume_is_exact(tmp_path, orientation, random_background):
    # With the light's orientation term on, its running moments travel in the checkpoint too; a random
    # background's colours are drawn again alike after the resume.
    s1, d = configs()
    d.light_orientation_weight, d.random_background = orientation, random_background
    run_train(SAMPLE, tmp_path / "a", resolution=32, config=s1, distill=d, quiet=True)
    # Pause inside stage 3 (global iteration = 30 stage-1 + 8 stage-2 + 3), then resume.
    s1b, db = configs()
    db.light_orientation_weight, db.random_background = orientation, random_background
    m = run_train(SAMPLE, tmp_path / "b", resolution=32, config=s1b, distill=db, stop_at=41, quiet=True)
    assert m["status"] == "paused"
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["stage"] == 3 and state["iteration"] == 11 and state["visibility"] is not None
    run_train(SAMPLE, tmp_path / "b", resume=True, quiet=True)
    a = Gaussians.load_ply(tmp_path / "a" / "point_cloud.ply")
    b = Gaussians.load_ply(tmp_path / "b" / "point_cloud.ply")
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert np.array_equal(read_exr(tmp_path / "a" / "environment.exr"), read_exr(tmp_path / "b" / "environment.exr"))


def test_a_traced_run_keeps_its_owners_resumes_exactly_and_relights(tmp_path):
    # reflection_trace: the grid's owners travel through the stage-3 checkpoint and into visibility.npz, and
    # prd relight traces with them. reflection_roughness 1 traces every pixel (the material starts rough).
    from prd_blender.trainer.relight import run_relight
    from prd_blender.trainer.shading.visibility import VisibilityGrid

    def traced() -> tuple[Stage1Config, DistillConfig]:
        s1, d = configs()
        return s1, dataclasses.replace(d, reflection_trace=True, reflection_roughness=1.0)

    s1, d = traced()
    run_train(SAMPLE, tmp_path / "a", resolution=32, hold_out_every=8, config=s1, distill=d, quiet=True)
    s1b, db = traced()
    m = run_train(SAMPLE, tmp_path / "b", resolution=32, hold_out_every=8, config=s1b, distill=db, stop_at=41,
                  quiet=True)
    assert m["status"] == "paused"
    run_train(SAMPLE, tmp_path / "b", resume=True, quiet=True)
    a = Gaussians.load_ply(tmp_path / "a" / "point_cloud.ply")
    b = Gaussians.load_ply(tmp_path / "b" / "point_cloud.ply")
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    grid = VisibilityGrid.load(str(tmp_path / "a" / "visibility.npz"))
    assert grid.owner is not None and int(grid.owner.max()) < len(a) and (grid.owner >= 0).any()
    hdri = tmp_path / "sky.exr"
    write_exr(hdri, np.full((16, 32, 3), 0.5, np.float32))
    (png, *_) = run_relight(tmp_path / "a", hdri, dest=tmp_path / "relit")
    assert np.asarray(Image.open(png))[..., 3].max() > 0


def test_a_specular_only_distillation_is_a_complete_run(tmp_path):
    # Stages 3-4 set to no iterations: no visibility grid is ever baked. The run still completes, lists no
    # grid, and relights and re-evaluates without one (shading then assumes an open sky).
    from prd_blender.trainer.pipeline import run_eval
    from prd_blender.trainer.relight import run_relight

    s1, d = configs()
    d.stage3 = d.stage4 = 0
    out = tmp_path / "run"
    m = run_train(SAMPLE, out, resolution=32, hold_out_every=8, config=s1, distill=d, quiet=True)
    assert m["status"] == "complete" and m["stage"] == 2
    assert "visibility" not in m["files"] and not (out / "visibility.npz").exists()
    assert (out / m["files"]["environment"]).is_file()
    hdri = tmp_path / "sky.exr"
    write_exr(hdri, np.full((16, 32, 3), 0.5, np.float32))
    (png, *_) = run_relight(out, hdri, dest=tmp_path / "relit")
    assert np.asarray(Image.open(png))[..., 3].max() > 0
    assert 5 < run_eval(out)["psnr"] < 60


def test_relight_command_renders_under_another_hdri(tmp_path):
    s1, d = configs()
    out = tmp_path / "run ü"
    run_train(SAMPLE, out, resolution=32, hold_out_every=8, config=s1, distill=d, quiet=True)
    hdri = sorted(HDRI_DIR.glob("*.hdr"))[0] if HDRI_DIR.is_dir() else None
    if hdri is None:  # no shared data: make a small gradient sky of our own
        hdri = tmp_path / "sky.exr"
        # A bright warm patch on one side: rotating about +Z must move it (an elevation-only sky would not).
        sky = np.full((32, 64, 3), 0.2, np.float32)
        sky[4:20, 24:40] = (4.0, 2.0, 0.5)
        write_exr(hdri, sky)
    renders = {}
    for rot in (0, 90):
        dest = tmp_path / f"rot{rot}"
        r = subprocess.run(
            [sys.executable, "-m", "prd_blender.trainer", "relight", str(out), "--hdri", str(hdri), "--rotation",
             str(rot), "--views", "test", "--dest", str(dest)],
            capture_output=True, text=True, timeout=300,
        )
        assert r.returncode == 0, r.stderr
        files = sorted(dest.glob("*.png"))
        assert len(files) == 6
        renders[rot] = np.asarray(Image.open(files[0]), np.float32)
    assert renders[0].shape == (32, 32, 4)
    assert np.abs(renders[0][..., :3] - renders[90][..., :3]).mean() > 0.1  # turning the light changes it
    r = subprocess.run(
        [sys.executable, "-m", "prd_blender.trainer", "relight", str(out), "--hdri", str(tmp_path / "missing.hdr")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0 and "missing.hdr" in r.stderr


def test_overwrite_removes_only_the_runs_own_maps(tmp_path):
    s1, d = configs(4)
    out = tmp_path / "run"
    run_train(SAMPLE, out, resolution=32, hold_out_every=8, config=s1, distill=d, quiet=True)
    (out / "maps" / "my_notes.txt").write_text("keep")
    s1, d = configs(4)
    run_train(SAMPLE, out, resolution=32, hold_out_every=8, config=s1, distill=d, overwrite=True, quiet=True)
    assert (out / "maps" / "my_notes.txt").read_text() == "keep"


def test_depth_normals_of_a_tilted_plane():
    from prd_blender.trainer.train.render import depth_normals

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 9), torch.linspace(-1, 1, 11), indexing="ij")
    pos = torch.stack([xs, ys, 2 + 0.5 * xs], -1)  # the plane z = 2 + x / 2, seen from the origin
    view = torch.nn.functional.normalize(-pos, dim=-1)
    n, inner = depth_normals(pos, view)
    expected = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, -1.0]), dim=0)  # facing the camera
    assert inner.sum() == 7 * 9 and not inner[0].any() and not inner[:, -1].any()
    assert torch.allclose(n[inner], expected.expand(63, 3), atol=1e-5)


def test_normal_consistency_loss_trains(tmp_path):
    s1, d = configs(4)
    d.normal_weight = 0.1
    m = run_train(SAMPLE, tmp_path / "o", resolution=32, config=s1, distill=d, quiet=True)
    assert m["status"] == "complete"


@pytest.mark.parametrize("channel", ["metallic", "roughness"])
def test_material_restarts_at_stage3_value(tmp_path, channel):
    # With the channel's learning rate at 0, what comes out is exactly what stage 3 started from; None keeps
    # stage 2's value, which is not the restart's.
    ends = {}
    for start in (0.3, None):
        s1, d = configs(3)
        setattr(d, f"{channel}_stage3", start)
        setattr(d, f"lr_{channel}", 0.0)
        run_train(SAMPLE, tmp_path / str(start), resolution=32, config=s1, distill=d, quiet=True)
        ends[start] = Gaussians.load_ply(tmp_path / str(start) / "point_cloud.ply").pbr(channel).detach()
    assert torch.allclose(ends[0.3], torch.full_like(ends[0.3], 0.3), atol=1e-3)
    assert (ends[None] - 0.3).abs().min() > 0.1


def test_metallic_prior_pulls_towards_dielectric(tmp_path):
    # Same seed, same data: only the prior's weight differs, so only it can lower the metallic channel.
    means = {}
    for weight in (0.0, 1.0):
        s1, d = configs(6)
        # From a neutral 0.5, where the sigmoid is steepest, so six iterations show the pull clearly.
        d.metallic_weight, d.metallic_stage3 = weight, 0.5
        run_train(SAMPLE, tmp_path / str(weight), resolution=32, config=s1, distill=d, quiet=True)
        means[weight] = Gaussians.load_ply(tmp_path / str(weight) / "point_cloud.ply").pbr("metallic").mean().item()
    assert means[1.0] < means[0.0] - 0.02, means


def test_flatten_loss_thins_the_shortest_axis_only():
    """Scale-free (the same for a Gaussian ten times larger), zero gradient on the middle and longest axes,
    and a positive one on the shortest: descent thins a Gaussian without widening it."""
    log_scales = torch.tensor([[0.0, -1.0, 0.5], [2.0, 1.0, 0.0]], requires_grad=True)
    loss = flatten_loss(log_scales)
    assert loss.item() == pytest.approx(math.exp(-1.0))  # each shortest axis is e^-1 of its middle one
    assert flatten_loss(log_scales.detach() + math.log(10)).item() == pytest.approx(loss.item())
    loss.backward()
    g = log_scales.grad
    assert g[0, 1] > 0 and g[1, 2] > 0
    assert g[0, 0] == 0 and g[0, 2] == 0 and g[1, 0] == 0 and g[1, 1] == 0


def test_flatten_weight_thins_the_gaussians_in_training(tmp_path):
    # Same seed, same data: only the weight differs, so only the term can thin the Gaussians.
    ratios = {}
    for weight in (0.0, 10.0):
        s1, d = configs(4)
        d.flatten_weight, d.lr_scales = weight, 0.05  # a faster scale rate: twelve iterations show the pull
        run_train(SAMPLE, tmp_path / str(weight), resolution=32, config=s1, distill=d, quiet=True)
        s = torch.sort(Gaussians.load_ply(tmp_path / str(weight) / "point_cloud.ply").params["scales"], 1).values
        ratios[weight] = torch.exp(s[:, 0] - s[:, 1]).mean().item()
    assert ratios[10.0] < 0.9 * ratios[0.0], ratios


def _two_layers(z_front: float, z_back: float, scale: float = 1.0):
    """Two wide Gaussians, thin along the view, in front of a camera on the y axis at camera depths z_front and
    z_back (the scene scaled by ``scale`` about the origin), and the camera."""
    from prd_blender.trainer.train.render import render_pbr_maps

    # Two more behind the camera (culled): from_points sizes each point by its three nearest neighbours.
    pts = np.array([[0.0, z_front - 3.0, 0.0], [0.0, z_back - 3.0, 0.0], [0.0, -10.0, 0.0], [1.0, -10.0, 0.0]])
    model = Gaussians.from_points(pts * scale, np.full((4, 3), 0.5), init_opacity=0.5)
    with torch.no_grad():
        model.params["scales"][:] = torch.log(torch.tensor([2.0, 0.01, 2.0]) * scale)
        model.params["quats"][:] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    model.add_pbr()
    cam = look_at_camera(np.array([0.0, -3.0, 0.0]) * scale, np.zeros(3), 40.0, 16)
    return model, render_pbr_maps(model, cam, 0, "cpu", depth_spread=True)


def _distortion(maps: dict, square: slice = slice(None)) -> torch.Tensor:
    """The term over the pixels of rows and columns ``square`` (the whole image by default)."""
    px = (square, square)
    return depth_distortion(maps["depth_spread"][px], maps["coverage"][px], maps["depth"][px], maps["depth_ref"])


def test_depth_distortion_is_the_pairwise_spread_along_each_ray():
    """At the centre pixel, two layers of opacity 0.5 blend with weights 0.5 and 0.25: the term is
    w1 w2 (z1 - z2)^2 over the expected depth squared. One layer costs nothing, and the term is scale-free."""
    _, maps = _two_layers(2.0, 4.0)
    w1, w2 = 0.5, 0.25
    depth = (w1 * 2.0 + w2 * 4.0) / (w1 + w2)
    assert float(maps["coverage"][8, 8]) == pytest.approx(w1 + w2, abs=0.01)
    assert _distortion(maps, slice(8, 9)).item() == pytest.approx(w1 * w2 * 4.0 / depth**2, rel=0.05)
    assert _distortion(_two_layers(3.0, 3.0)[1]).item() < 1e-6
    assert _distortion(_two_layers(2.0, 4.0, scale=10.0)[1]).item() == pytest.approx(_distortion(maps).item(), rel=0.02)


def test_depth_distortion_pulls_the_layers_together():
    """Descent on the term alone moves the front layer back and the back layer forward."""
    model, maps = _two_layers(2.0, 4.0)
    _distortion(maps).backward()
    g = model.params["means"].grad[:2, 1]  # world y is the camera's depth axis here
    assert g[0] < 0 < g[1], g  # descent moves the front one (y = -1) to +y and the back one (y = 1) to -y


def test_distortion_weight_gathers_each_ray_in_training(tmp_path):
    # Same seed, same data: only the weight differs, so only the term can gather the Gaussians along each ray.
    from prd_blender.trainer.capture import load_capture
    from prd_blender.trainer.train.render import Camera, render_pbr_maps

    views = load_capture(SAMPLE, resolution=32).views[:6]
    spread = {}
    for weight in (0.0, 300.0):
        s1, d = configs(4)
        d.distortion_weight, d.lr_means = weight, 1e-3  # a faster rate: twelve iterations show the pull
        run_train(SAMPLE, tmp_path / str(weight), resolution=32, config=s1, distill=d, quiet=True)
        model = Gaussians.load_ply(tmp_path / str(weight) / "point_cloud.ply")
        with torch.no_grad():
            terms = []
            for v in views:
                maps = render_pbr_maps(model, Camera.from_view(v), 0, "cpu", depth_spread=True)
                terms.append(depth_distortion(maps["depth_spread"], maps["coverage"], maps["depth"],
                                              maps["depth_ref"]).item())
        spread[weight] = float(np.mean(terms))
    assert spread[300.0] < 0.8 * spread[0.0], spread


def test_bench_overrides_parse_by_field_type():
    from prd_blender.trainer.cli import parse_overrides

    items = ["metallic_stage3=0.2", "stage2=40", "real_scene=true", "tonemap=aces", "metallic_stage3=none"]
    got = parse_overrides(items)
    assert got == {"metallic_stage3": None, "stage2": 40, "real_scene": True, "tonemap": "aces"}
    with pytest.raises(SystemExit):
        parse_overrides(["no_such_field=1"])


def test_bench_relight_seeds_parse(capsys):
    from prd_blender.trainer.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["bench", "relight"]).seeds == [0]
    assert parse(["bench", "relight", "--seeds", "0,1,2"]).seeds == [0, 1, 2]
    for bad in ("0,0", "a", ""):
        with pytest.raises(SystemExit):
            parse(["bench", "relight", "--seeds", bad])
        assert "seeds are distinct integers" in capsys.readouterr().err


def test_a_benchmark_record_keeps_the_sessions_experiments(tmp_path):
    """A rerun refreshes the record's headline and keeps every ``*_experiments`` entry already in the file;
    a file that is not a JSON object is replaced whole."""
    from prd_blender.trainer.bench.common import record

    path = tmp_path / "relight.json"
    path.write_text(json.dumps({"mean": {"relight_psnr": 1.0}, "run1_experiments": {"note": "kept"}}))
    rec = record(path, {"mean": {"relight_psnr": 2.0}})
    saved = json.loads(path.read_text())
    assert saved["mean"] == {"relight_psnr": 2.0} and saved["run1_experiments"] == {"note": "kept"}
    assert saved["command"] == rec["command"] and "run1_experiments" not in rec
    record(path, {"run1_experiments": {"note": "new"}})  # this run's own entry wins over the file's
    assert json.loads(path.read_text())["run1_experiments"] == {"note": "new"}
    path.write_text("[1, 2]")
    record(path, {"mean": {}})
    assert "run1_experiments" not in json.loads(path.read_text())


def test_bench_relight_refuses_missing_inputs_before_training(tmp_path):
    """A wrong --hdri-dir or a missing object is reported before anything trains: the relit views are scored
    only after each object's training, which would otherwise be thrown away."""
    import json

    from prd_blender.trainer.bench.relight import bench_relight, check_inputs

    data, hdris, cache = tmp_path / "data", tmp_path / "hdri", tmp_path / "s1"
    (data / "diffuse").mkdir(parents=True)
    hdris.mkdir()
    meta = {"hdri": {"name": "a", "file": "a.hdr"}, "relight_hdris": [{"name": "b", "file": "b.hdr"}]}
    (data / "diffuse" / "meta.json").write_text(json.dumps(meta))
    (hdris / "a.hdr").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"b\.hdr.*'diffuse'"):
        bench_relight(data, ["diffuse"], ["prd"], 10, 10, hdris, None, stage1_cache=cache)
    with pytest.raises(FileNotFoundError, match="'glossy'"):
        check_inputs(data, ["glossy"], hdris)
    assert not cache.exists()  # nothing was trained
    (hdris / "b.hdr").write_bytes(b"")
    check_inputs(data, ["diffuse"], hdris)


def test_specular_visibility_flag_darkens_only_occluded_reflections():
    """shade_maps with ``specular_visibility``: a pixel whose reflection points into a blocked half of the
    sky loses specular light, one reflecting into the open sky keeps it; without it both are left alone."""

    from sh_util import project_sh

    from prd_blender.trainer.shading.visibility import VisibilityGrid

    # visibility everywhere: the upper hemisphere except the +x side (a wall)
    coeffs = project_sh(lambda d: (d[:, 2] > 0) & (d[:, 0] < 0.2), 2).numpy()[None]
    vis = VisibilityGrid(np.full(3, -10.0), 20.0, np.zeros((1, 1, 1), np.int32), coeffs, 2)
    view = torch.nn.functional.normalize(torch.tensor([[[-1.0, 0, 1], [1.0, 0, 1]]]), dim=-1)  # reflect to +x / -x
    maps = {"albedo": torch.full((1, 2, 3), 0.8), "roughness": torch.full((1, 2, 1), 0.1),
            "metallic": torch.ones(1, 2, 1), "normal": torch.tensor([[[0.0, 0, 1], [0.0, 0, 1]]]), "view": view,
            "position": torch.zeros(1, 2, 3), "progress": torch.ones(1, 2, 1), "raw": torch.zeros(1, 2, 3)}
    light, lut = EnvironmentLight(16, init=1.0), get_brdf_lut(64, 256, cache_dir=None)
    # read the one cell at the point itself; no bounce, so the occlusion shows alone
    cfg = DistillConfig(visibility_offset=0.0, specular_visibility=False, indirect=0.0)
    plain = shade_maps(maps, light, lut, vis, 4, cfg)["phy"]
    occluded = shade_maps(maps, light, lut, vis, 4, dataclasses.replace(cfg, specular_visibility=True))["phy"]
    assert occluded[0, 0].mean() < 0.7 * plain[0, 0].mean()  # towards the wall
    assert torch.allclose(occluded[0, 1], plain[0, 1], rtol=0.02)  # away from it


def test_raw_fixed_geometry_keeps_the_image_and_cuts_the_geometry_gradient():
    """The second pass splats the same radiance colour (same maps), but the radiance branch's loss no
    longer reaches positions, shapes or opacities; it still reaches the SH colour."""
    from prd_blender.trainer.train.render import render_pbr_maps

    rng = np.random.default_rng(0)
    model = Gaussians.from_points(rng.normal(0, 0.3, (200, 3)), rng.random((200, 3)), init_opacity=0.5)
    model.add_pbr()
    cam = look_at_camera(np.array([0.0, -3.0, 1.0]), np.zeros(3), 40.0, 32)
    grads = {}
    for fixed in (False, True):
        for p in model.params.values():
            p.grad = None
        maps = render_pbr_maps(model, cam, 3, "cpu", raw_fixed_geometry=fixed)
        (maps["raw"] * maps["coverage"].detach()).sum().backward()
        grads[fixed] = {k: model.params[k].grad for k in ("means", "opacities", "sh0")}
        grads[fixed]["raw"] = maps["raw"].detach()
    assert torch.allclose(grads[True]["raw"], grads[False]["raw"], atol=1e-5)
    assert grads[False]["means"].abs().sum() > 0 and grads[False]["opacities"].abs().sum() > 0
    assert grads[True]["means"] is None or grads[True]["means"].abs().sum() == 0
    assert grads[True]["opacities"] is None or grads[True]["opacities"].abs().sum() == 0
    assert grads[True]["sh0"].abs().sum() > 0


def test_metallic_prior_spares_smooth_metal_and_leaves_roughness_alone():
    from prd_blender.trainer.train.distill import metallic_prior

    rough = torch.tensor([[[0.1], [0.9]]]).requires_grad_(True)  # one smooth, one rough pixel
    metal = torch.ones(1, 2, 1, requires_grad=True)
    maps = {"roughness": rough, "metallic": metal, "coverage": torch.ones(1, 2, 1)}
    for power, ratio in ((0.0, 1.0), (2.0, (0.1 / 0.9) ** 2)):
        metal.grad = None
        metallic_prior(maps, power).backward()
        g = metal.grad[0, :, 0]
        assert g[1] > 0 and torch.isclose(g[0] / g[1], torch.tensor(ratio)), (power, g)
        assert rough.grad is None  # the prior never pushes roughness


def test_config_from_an_older_run_keeps_the_shading_it_was_trained_with():
    """run.json written before ``indirect`` existed: relighting it must not switch the bounce on, a field
    the trainer dropped is ignored, and a current run's config comes back unchanged."""

    current = dataclasses.asdict(DistillConfig(stage2=7))
    assert DistillConfig.from_run(current) == DistillConfig(stage2=7)
    added = ("indirect", "specular_visibility", "physical_weight", "light_orientation_weight", "orient_every",
             "metallic_stage3", "material_smooth_weight", "roughness_stage3", "metal_albedo_smooth_weight",
             "metal_albedo_power")
    old = {k: v for k, v in current.items() if k not in added}
    cfg = DistillConfig.from_run(old | {"gone": 1})
    assert cfg.indirect == 0.0 and not cfg.specular_visibility and cfg.physical_weight == 0.0 and cfg.stage2 == 7
    assert cfg.light_orientation_weight == 0.0 and cfg.orient_every == 0 and cfg.metallic_stage3 is None
    assert cfg.material_smooth_weight == 0.0 and cfg.roughness_stage3 is None
    assert cfg.metal_albedo_smooth_weight == 0.0 and cfg.metal_albedo_power == 1.0
    # A run with the metal albedo term on, from before its power existed, was weighted by the metallic itself.
    assert DistillConfig.from_run(old | {"metal_albedo_smooth_weight": 0.02}).metal_albedo_power == 1.0
    new = DistillConfig()  # what a new run gets
    assert new.indirect > 0 and new.specular_visibility and new.physical_weight > 0
    assert new.light_orientation_weight > 0 and new.orient_every > 0 and new.material_smooth_weight > 0
    assert new.metal_albedo_smooth_weight > 0 and new.metal_albedo_power > 1


def _low_progress_pixels(n: int = 4):
    """A camera, maps of a facing grey surface at progress 0.01 whose radiance field already fits the image,
    and a uniform light: the physical branch is wrong (albedo 0.3) where the blend hides it."""
    cam = look_at_camera(np.array([0.0, -3.0, 0.0]), np.zeros(3), 40.0, n)
    cam.image = torch.full((n, n, 3), 0.6)
    facing = torch.tensor([0.0, -1.0, 0.0]).expand(n, n, 3)  # towards the camera
    maps = {"albedo": torch.full((n, n, 3), 0.3, requires_grad=True), "roughness": torch.full((n, n, 1), 0.5),
            "metallic": torch.zeros(n, n, 1), "normal": facing, "view": facing, "position": torch.zeros(n, n, 3),
            "progress": torch.full((n, n, 1), 0.01), "raw": torch.full((n, n, 3), 0.6), "coverage": torch.ones(n, n, 1)}
    return cam, maps, EnvironmentLight(16, init=1.0), get_brdf_lut(64, 256, cache_dir=None)


def _loss(maps, cam, light, lut, stage, cfg):
    sh = shade_maps(maps, light, lut, None, stage, cfg)
    return distill_loss(maps, sh, cam, torch.zeros(3), light, stage, cfg), sh


def test_physical_weight_trains_the_physical_branch_where_progress_is_low():
    """Progress 0.01: through the blend alone the albedo sees 1 % of the image loss's gradient; the extra term
    scores I_phy directly, so the albedo's gradient grows by far more than the blend's share."""
    cam, maps, light, lut = _low_progress_pixels()
    albedo = maps["albedo"]
    base = DistillConfig(normal_weight=0.0, light_weight=0.0, mask_weight=0.0)
    grads = {}
    for w in (0.0, 1.0):
        cfg = dataclasses.replace(base, physical_weight=w)
        albedo.grad = None
        (loss, img), sh = _loss(maps, cam, light, lut, 3, cfg)
        loss.backward()
        grads[w] = albedo.grad.abs().sum().item()
        assert torch.allclose(img, sh["blend"])  # the image scored for the log is still the blend
    assert grads[0.0] > 0 and grads[1.0] > 30 * grads[0.0], grads
    # stage 2 leaves the term out (the specular fit of stage 2 is the method's own)
    cfg = dataclasses.replace(base, physical_weight=1.0)
    assert torch.equal(_loss(maps, cam, light, lut, 2, cfg)[0][0], _loss(maps, cam, light, lut, 2, base)[0][0])
    # nor does the ablation (a), whose blend is I_phy already
    direct = dataclasses.replace(cfg, variant="direct")
    assert torch.equal(_loss(maps, cam, light, lut, 3, direct)[0][0],
                       _loss(maps, cam, light, lut, 3, dataclasses.replace(direct, physical_weight=0))[0][0])


def test_physical_term_can_leave_the_light_to_the_blend():
    """``physical_light`` off: the term still trains the albedo as much, but the light's gradient is the
    blend's alone (the same as with the term off), and the loss's value does not change."""
    cam, maps, light, lut = _low_progress_pixels()
    base = DistillConfig(normal_weight=0.0, light_weight=0.0, mask_weight=0.0, physical_weight=1.0)
    grads, losses = {}, {}
    for name, cfg in {"on": base, "fixed": dataclasses.replace(base, physical_light=False),
                      "off": dataclasses.replace(base, physical_weight=0.0)}.items():
        light.zero_grad()
        maps["albedo"].grad = None
        (loss, _), _ = _loss(maps, cam, light, lut, 3, cfg)
        loss.backward()
        grads[name] = (light.log_radiance.grad.clone(), maps["albedo"].grad.clone())
        losses[name] = loss.item()
    assert losses["fixed"] == pytest.approx(losses["on"], rel=1e-6)
    assert torch.allclose(grads["fixed"][1], grads["on"][1])  # the albedo learns from the term as before
    assert torch.allclose(grads["fixed"][0], grads["off"][0], atol=1e-12)  # the light only from the blend
    assert grads["on"][0].abs().sum() > 10 * grads["off"][0].abs().sum()  # which is much less than with it


def test_edge_aware_smoothness_spares_edges_the_photo_shows():
    """An albedo step costs less where the photo has the same edge than where the photo is flat; a flat
    albedo costs nothing, and pixels without surface are not counted."""
    n = 8
    step = torch.zeros(n, n, 3)
    step[:, n // 2:] = 0.5
    cover = torch.ones(n, n, 1)
    flat_photo = torch.full((n, n, 3), 0.4)
    edge_photo = 0.2 + step
    assert edge_aware_smoothness(torch.full((n, n, 3), 0.3), cover, edge_photo).item() == 0.0
    on_edge = edge_aware_smoothness(step, cover, edge_photo).item()
    off_edge = edge_aware_smoothness(step, cover, flat_photo).item()
    assert 0 < on_edge < 0.05 * off_edge
    assert off_edge == pytest.approx(n * 1.5 / (n * n))  # one column of jumps of 0.5 in three channels
    half = cover.clone()
    half[:, n // 2:] = 0  # the step's bright side has no surface: no neighbour pair crosses it
    assert edge_aware_smoothness(step, half, flat_photo).item() == 0.0


def test_material_smoothness_evens_a_noisy_roughness_and_metallic():
    """``material_smooth_weight``: a checkered roughness and metallic under a flat photo are pulled towards
    each other (descent lowers the high squares, raises the low ones); stage 2 leaves the metallic alone, as it
    does not learn it, and weight 0 adds nothing. By default (``material_smooth_stage`` 3) stage 2 has no term."""
    cam, maps, light, lut = _low_progress_pixels(8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 == 0
    base = DistillConfig(normal_weight=0.0, light_weight=0.0, mask_weight=0.0, light_orientation_weight=0.0,
                         material_smooth_stage=2)
    for stage in (2, 3):
        grads = {}
        for w in (0.0, 0.05):
            for name in ("roughness", "metallic"):
                maps[name] = torch.where(checker, 0.9, 0.1)[..., None].clone().requires_grad_(True)
            (loss, _), _ = _loss(maps, cam, light, lut, stage, dataclasses.replace(base, material_smooth_weight=w))
            loss.backward()
            # stage 2 shades everything as metal: its metallic map may take no gradient at all
            grads[w] = {name: torch.zeros(8, 8) if maps[name].grad is None else maps[name].grad[..., 0]
                        for name in ("roughness", "metallic")}
        for name in ("roughness", "metallic"):
            extra = grads[0.05][name] - grads[0.0][name]
            if stage == 2 and name == "metallic":
                assert extra.abs().max() == 0
                continue
            assert (extra[checker] > 0).all() and (extra[~checker] < 0).all(), (stage, name)
    default = dataclasses.replace(base, material_smooth_stage=DistillConfig().material_smooth_stage)
    assert torch.equal(_loss(maps, cam, light, lut, 2, default)[0][0],
                       _loss(maps, cam, light, lut, 2, dataclasses.replace(default, material_smooth_weight=0.0))[0][0])


def test_metal_albedo_smoothness_evens_only_the_metal_and_leaves_the_metallic_alone():
    """``metal_albedo_smooth_weight``: a checkered albedo is pulled together where both neighbours are metal,
    whatever the photo shows (no edge weight), not on a dielectric; the metallic takes no gradient from it."""
    cam, maps, light, lut = _low_progress_pixels(8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 == 0
    cam.image = torch.where(checker, 0.9, 0.1)[..., None].expand(8, 8, 3).clone()  # the photo shows every edge
    base = DistillConfig(normal_weight=0.0, light_weight=0.0, mask_weight=0.0, light_orientation_weight=0.0,
                         material_smooth_weight=0.0)
    metal = torch.zeros(8, 8, 1)
    metal[:, :4] = 1.0  # the left half is metal
    grads = {}
    for w in (0.0, 0.05):
        maps["albedo"] = torch.where(checker, 0.8, 0.2)[..., None].expand(8, 8, 3).clone().requires_grad_(True)
        maps["metallic"] = metal.clone().requires_grad_(True)
        (loss, _), _ = _loss(maps, cam, light, lut, 3, dataclasses.replace(base, metal_albedo_smooth_weight=w))
        loss.backward()
        grads[w] = (maps["albedo"].grad.sum(-1), maps["metallic"].grad[..., 0])
    extra = grads[0.05][0] - grads[0.0][0]
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :3] = True  # pixels whose every horizontal neighbour is metal too
    assert (extra[checker & left] > 0).all() and (extra[~checker & left] < 0).all()
    assert extra[:, 5:].abs().max() == 0  # dielectric pairs carry no weight
    assert torch.equal(grads[0.05][1], grads[0.0][1])  # detached: it cannot pay for itself by lowering the metal
    plain = maps["albedo"].detach().clone().requires_grad_(True)  # the photo's edges do not spare the metal
    (0.05 * edge_aware_smoothness(plain, torch.ones(8, 8, 1), cam.image, 0.0, metal[..., 0])).backward()
    assert torch.allclose(extra, plain.grad.sum(-1), atol=1e-7)
    # With weight: each pair takes the smaller weight; without it, the plain (sharpness 0) variation.
    step, cover, photo = maps["albedo"].detach(), torch.ones(8, 8, 1), torch.rand(8, 8, 3)
    full = edge_aware_smoothness(step, cover, photo, sharpness=0.0)
    assert edge_aware_smoothness(step, cover, photo, 0.0, torch.ones(8, 8)).item() == pytest.approx(full.item())
    half = edge_aware_smoothness(step, cover, photo, 0.0, metal[..., 0]).item()
    assert 0 < half < 0.5 * full.item()


def test_metal_albedo_power_spares_a_partial_metal_and_keeps_a_full_one():
    """``metal_albedo_power``: the term's pixel weight is the metallic to that power, so a half-metal region's
    pull shrinks by 0.5 ** (power - 1) against power 1's, while a full metal's is unchanged; a negative power is
    refused."""
    cam, maps, light, lut = _low_progress_pixels(8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 == 0
    cam.image = torch.where(checker, 0.9, 0.1)[..., None].expand(8, 8, 3).clone()
    base = DistillConfig(normal_weight=0.0, light_weight=0.0, mask_weight=0.0, light_orientation_weight=0.0,
                         material_smooth_weight=0.0)
    metal = torch.full((8, 8, 1), 0.5)
    metal[:, :4] = 1.0  # left half full metal, right half half metal
    pulls = {}
    for power in (1.0, 4.0):
        grads = []
        for w in (0.0, 0.05):
            maps["albedo"] = torch.where(checker, 0.8, 0.2)[..., None].expand(8, 8, 3).clone().requires_grad_(True)
            maps["metallic"] = metal.clone()
            cfg = dataclasses.replace(base, metal_albedo_smooth_weight=w, metal_albedo_power=power)
            (loss, _), _ = _loss(maps, cam, light, lut, 3, cfg)
            loss.backward()
            grads.append(maps["albedo"].grad.sum(-1))
        pulls[power] = grads[1] - grads[0]
    full, partial = (slice(None), slice(0, 3)), (slice(None), slice(5, 8))  # every horizontal neighbour alike
    assert torch.allclose(pulls[4.0][full], pulls[1.0][full], atol=1e-7)
    assert pulls[1.0][partial].abs().min() > 0
    assert torch.allclose(pulls[4.0][partial], pulls[1.0][partial] * 0.5 ** 3, atol=1e-7)
    with pytest.raises(ValueError, match="metal_albedo_power"):
        DistillConfig(metal_albedo_power=-1.0)


def test_random_background_recomposites_the_view_through_its_alpha():
    """``random_background``: the view's object keeps its pixels, its background takes the drawn colour, partly
    covered pixels mix the two by the alpha; the colour depends on the seed and iteration alone (resumable)."""
    cam, _, _, _ = _low_progress_pixels(4)
    white = torch.ones(3)
    alpha = torch.tensor([[0.0, 0.25, 1.0, 1.0]]).expand(4, 4)
    obj = torch.tensor([0.2, 0.4, 0.6])
    cam.image = alpha[..., None] * obj + (1 - alpha[..., None]) * white  # premultiplied over white, as loaded
    cam.mask = alpha
    other, colour = random_background(cam, white, seed=0, it=7)
    assert torch.allclose(other.image, alpha[..., None] * obj + (1 - alpha[..., None]) * colour, atol=1e-6)
    assert not torch.allclose(colour, white) and torch.equal(cam.image[0, 0], white)  # the view itself is untouched
    assert torch.equal(random_background(cam, white, seed=0, it=7)[1], colour)
    assert not torch.equal(random_background(cam, white, seed=0, it=8)[1], colour)
    assert not torch.equal(random_background(cam, white, seed=1, it=7)[1], colour)


def test_paired_background_sees_a_halo_that_white_hides():
    """``paired_background``: the view over black and over white, both scored. A white halo of Gaussians beyond the
    object's silhouette costs nothing over white alone; over the pair it costs, and its coverage and colour are
    pushed down. The pair is the capture's own pixels where the alpha is 1, and a view without alpha keeps its one."""
    cam, maps, light, lut = _low_progress_pixels(4)
    white = torch.ones(3)
    alpha = torch.ones(4, 4)
    alpha[:, 0] = 0.0  # the truth's first column is background
    cam.image = alpha[..., None] * 0.6 + (1 - alpha[..., None]) * white
    cam.mask = alpha
    pairs = paired_backgrounds(cam, white)
    assert [c.tolist() for c, _ in pairs] == [[0.0] * 3, [1.0] * 3]
    assert torch.equal(pairs[1][1], cam.image) and torch.equal(pairs[0][1][:, 0], torch.zeros(4, 3))
    assert torch.equal(pairs[0][1][:, 1:], cam.image[:, 1:])
    assert paired_backgrounds(dataclasses.replace(cam, mask=None), white) == [(white, cam.image)]
    raw = torch.full((4, 4, 3), 0.6)
    raw[:, 0] = 1.0  # the halo: covered and white where the truth is background
    maps["raw"] = raw.requires_grad_(True)
    maps["coverage"] = torch.ones(4, 4, 1, requires_grad=True)
    cfg = DistillConfig(normal_weight=0.0)
    grads = {}
    for name, targets in (("white", None), ("pair", pairs)):
        maps["raw"].grad = maps["coverage"].grad = None
        sh = shade_maps(maps, light, lut, None, 2, cfg)
        loss, img = distill_loss(maps, sh, cam, white, light, 2, cfg, targets=targets)
        loss.backward()
        grads[name] = (maps["coverage"].grad[:, 0].sum().item(), maps["raw"].grad[:, 0].sum().item(), loss.item())
        assert torch.allclose(img, composite(sh["blend"], maps["coverage"], white))  # logged over the capture's
    # Over white the halo's coverage is free and its colour is pushed towards white; over the pair both go down.
    assert grads["pair"][0] > 20 * abs(grads["white"][0]) and grads["white"][1] <= 0 < grads["pair"][1], grads
    assert grads["pair"][2] > 2 * grads["white"][2]
    with pytest.raises(ValueError, match="turn on one"):  # refused when the config is made, before stage 1
        DistillConfig(random_background=True, paired_background=True)
    # From its stage on (``paired_background_stage``): before it the view keeps the capture's background.
    late = DistillConfig(paired_background=True, paired_background_stage=3)
    assert view_backgrounds(cam, white, late, 2, 0, 1) == (cam, white, None)
    for stage in (3, 4):
        got = view_backgrounds(cam, white, late, stage, 0, 1)[2]
        assert [c.tolist() for c, _ in got] == [[0.0] * 3, [1.0] * 3], stage
    assert view_backgrounds(cam, white, DistillConfig(paired_background=True), 2, 0, 1)[2] is not None
    assert view_backgrounds(cam, white, DistillConfig(paired_background=True, real_scene=True), 3, 0, 1)[2] is None
    with pytest.raises(ValueError, match="2, 3 or 4"):
        DistillConfig(paired_background_stage=5)


def _sphere_normals(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthographic view of a unit sphere: its normals (n, n, 3) and coverage (n, n, 1)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    inside = x * x + y * y < 0.95
    z = torch.sqrt((1 - x * x - y * y).clamp_min(0))
    return torch.stack([x, y, z], -1) * inside[..., None], inside[..., None].float()


def test_albedo_orientation_finds_a_pattern_of_the_normal_and_pulls_it_out():
    """Log-albedo linear in the normal is explained in full (its variance comes back); a checker that ignores
    the normal hardly at all, nor does anything off the surface; and beside an image loss that cannot tell
    albedo from light, the term moves the pattern out of the albedo into the light."""
    normal, cover = _sphere_normals(48)
    inside = cover[..., 0] > 0.5
    k = 0.4
    shade = torch.exp(k * normal[..., 2:3]).expand(-1, -1, 3)
    prior = AlbedoOrientation(decay=1.0)
    prior.step(0.5 * shade, normal, cover)
    expected = 3 * (k * normal[..., 2][inside]).var(unbiased=False).item()
    assert prior.explained() == pytest.approx(expected, rel=0.01)
    i, j = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    checker = (0.2 + 0.5 * ((i // 6 + j // 6) % 2).float())[..., None].expand(-1, -1, 3).clone()
    total = 3 * torch.log(checker[..., 0][inside]).var(unbiased=False).item()
    plain = AlbedoOrientation(decay=1.0)
    plain.step(torch.where(inside[..., None], checker, torch.full_like(checker, 5.0)), normal, cover)
    assert plain.explained() < 0.05 * total
    assert AlbedoOrientation().step(checker, normal, torch.zeros_like(cover)).item() == 0.0

    # The ambiguity it resolves: an image = albedo x irradiance, where the albedo starts out holding the
    # irradiance's pattern and a one-parameter "light" exp(gain z) none of it. The image alone cannot tell
    # them apart; with the term, the pattern moves into the light.
    image = checker * shade
    for weight, gain_after in ((0.0, (-0.05, 0.05)), (5.0, (0.75 * k, 1.2 * k))):
        log_albedo = torch.log(image).clone().requires_grad_(True)
        gain = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([log_albedo, gain], lr=0.01)
        prior = AlbedoOrientation()
        for _ in range(600):
            opt.zero_grad()
            render = log_albedo.exp() * torch.exp(gain * normal[..., 2:3])
            loss = (render - image)[inside].abs().mean() + weight * prior.step(log_albedo.exp(), normal, cover)
            loss.backward()
            opt.step()
        assert gain_after[0] < gain.item() < gain_after[1], (weight, gain.item())


def test_light_orientation_lights_the_normals_whose_albedo_came_out_bright():
    """An albedo brighter on the normals facing +z (a noise texture times exp(0.4 z)) under a uniform light: the term's
    gradient (plain descent, the albedo held), raises the light's irradiance at +z against +x; an albedo without
    the pattern leaves the light nearly as it was, and metal pixels (weight 1 - metallic) are not counted."""
    from prd_blender.trainer.shading.diffuse import irradiance_sh
    from prd_blender.trainer.train.distill import light_orientation

    normal, cover = _sphere_normals(48)
    texture = 0.2 + 0.5 * torch.rand(48, 48, 3, generator=torch.Generator().manual_seed(0))  # no orientation
    probe = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

    def trained_ratio(albedo: torch.Tensor, metallic: float) -> float:
        light = EnvironmentLight(16, init=1.0)
        opt = torch.optim.SGD(light.parameters(), lr=100.0)  # steps in proportion to the pull, unlike Adam
        prior = AlbedoOrientation()
        maps = {"albedo": albedo, "normal": normal, "coverage": cover, "metallic": torch.full_like(cover, metallic)}
        for _ in range(40):
            opt.zero_grad()
            light_orientation(maps, light, prior).backward()
            opt.step()
        irr = irradiance_sh(probe, light.sh_coeffs(order=2)).detach()
        return (irr[0] / irr[1]).mean().item()

    assert trained_ratio(texture * torch.exp(0.4 * normal[..., 2:3]), 0.0) > 1.05
    assert abs(trained_ratio(texture, 0.0) - 1) < 0.005
    assert abs(trained_ratio(texture * torch.exp(0.4 * normal[..., 2:3]), 1.0) - 1) < 1e-4


def test_light_orientation_term_is_on_by_default_where_the_light_is_learned_on_an_object():
    """The default run pools the albedo's orientation moments from stage 3 on and adds the light's term; a known
    light, a real scene (no mask) and stage 2 leave both alone."""
    cam, maps, light, lut = _low_progress_pixels(8)  # 64 covered pixels: enough for the regression
    normal = torch.randn(8, 8, 3, generator=torch.Generator().manual_seed(1))
    maps["normal"] = normal / normal.norm(dim=-1, keepdim=True)
    maps["albedo"] = (0.3 * torch.exp(0.4 * maps["normal"][..., 2:3])).expand(8, 8, 3)  # brighter facing +z
    cfg = DistillConfig(normal_weight=0.0)
    cases = ((3, {}, True), (4, {}, True), (2, {}, False), (3, {"real_scene": True}, False),
             (3, {"known_light": "sky.exr"}, False), (3, {"light_orientation_weight": 0.0}, False))
    for stage, change, counted in cases:
        prior = AlbedoOrientation()
        c = dataclasses.replace(cfg, **change)
        sh = shade_maps(maps, light, lut, None, stage, c)
        light.log_radiance.grad = None
        loss, _ = distill_loss(maps, sh, cam, torch.zeros(3), light, stage, c, prior)
        assert (prior.weight == 1.0) == counted, (stage, change)
        if counted:  # the term reaches the light (the grey prior aside, compare without the term)
            loss.backward()
            with_term = light.log_radiance.grad.clone()
            light.log_radiance.grad = None
            off = dataclasses.replace(c, light_orientation_weight=0.0)
            distill_loss(maps, shade_maps(maps, light, lut, None, stage, off), cam, torch.zeros(3), light, stage,
                         off, AlbedoOrientation())[0].backward()
            assert (with_term - light.log_radiance.grad).abs().max() > 0.01 * with_term.abs().max(), stage


def test_light_learning_rate_after_stage_two():
    """``lr_light_stage34`` sets the light's rate once stage 2 is over; real scenes still freeze it in stage 4,
    and so does ``freeze_light_stage4``."""
    model = Gaussians.random_in_sphere(np.zeros(3), 1.0, 20)
    model.add_pbr(progress=0.5)
    cfg = DistillConfig(lr_light=0.01, lr_light_stage34=0.002)
    opt = _optimizers(model, EnvironmentLight(8), cfg, 1.0)
    rates = {}
    for stage, real in ((2, False), (3, False), (4, False), (4, True)):
        _set_stage_lrs(opt, stage, dataclasses.replace(cfg, real_scene=real), held=False)
        rates[stage, real] = opt["light"].param_groups[0]["lr"]
    assert rates == {(2, False): 0.01, (3, False): 0.002, (4, False): 0.002, (4, True): 0.0}
    _set_stage_lrs(opt, 3, DistillConfig(lr_light=0.03), held=False)  # unset: stages 3-4 follow lr_light
    assert opt["light"].param_groups[0]["lr"] == 0.03
    frozen = dataclasses.replace(cfg, freeze_light_stage4=True)  # an object capture may hold it in stage 4 too
    for stage, rate in ((2, 0.01), (3, 0.002), (4, 0.0)):
        _set_stage_lrs(opt, stage, frozen, held=False)
        assert opt["light"].param_groups[0]["lr"] == rate, stage


def test_material_and_rotation_learning_rates_after_stage_two():
    """``lr_albedo_stage34``, ``lr_roughness_stage34`` and ``lr_quats_stage34`` set those rates once stage 2 is over
    (None: the stage-2 rate throughout); metallic learns only from stage 3 on, at ``lr_metallic`` and in stage 4 at
    ``lr_metallic_stage4`` (None: ``lr_metallic``)."""
    model = Gaussians.random_in_sphere(np.zeros(3), 1.0, 20)
    model.add_pbr(progress=0.5)
    cfg = DistillConfig(lr_albedo=0.05, lr_roughness=0.04, lr_metallic=0.01, lr_albedo_stage34=0.02,
                        lr_roughness_stage34=0.005, lr_metallic_stage4=0.002, lr_quats=1e-3, lr_quats_stage34=3e-3)
    opt = _optimizers(model, EnvironmentLight(8), cfg, 1.0)
    names = ("albedo", "roughness", "metallic", "quats")
    rates = {}
    for stage in (2, 3, 4):
        _set_stage_lrs(opt, stage, cfg, held=False)
        rates[stage] = tuple(opt[k].param_groups[0]["lr"] for k in names)
    assert rates == {2: (0.05, 0.04, 0.0, 1e-3), 3: (0.02, 0.005, 0.01, 3e-3), 4: (0.02, 0.005, 0.002, 3e-3)}
    unset = DistillConfig(lr_albedo=0.03, lr_roughness=0.02, lr_metallic=0.04, lr_quats=2e-3)
    _set_stage_lrs(opt, 4, unset, held=False)
    assert tuple(opt[k].param_groups[0]["lr"] for k in names) == (0.03, 0.02, 0.04, 2e-3)


def _sky(h: int = 16) -> np.ndarray:
    """A bright warm sky over a dark ground, brighter towards +X: an equirect map with direction in it."""
    rows = np.linspace(2.0, 0.05, h)[:, None, None]
    cols = 1.0 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, 2 * h))[None, :, None]
    return (rows * cols * np.array([1.0, 0.8, 0.6])).astype(np.float32)


def _sunny_sky(h: int = 16) -> np.ndarray:
    """``_sky`` with a sun: one texel a thousand times the sky's brightness, up and towards +X."""
    img = _sky(h)
    img[h // 4, h] = 1000.0 * np.array([1.0, 0.9, 0.8], np.float32)
    return img


def test_known_light_sun_is_split_off_and_its_gain_trains():
    """A known light with a sun is shaded in training as sky + sun (hard shadow) and the sun's light still
    reaches the gain: the gradient of a sunlit pixel flows into the light's log-radiance through the split."""
    from prd_blender.trainer.train.distill import _gain_only, trained_environment

    light = EnvironmentLight(16, init=_sunny_sky())
    light.log_radiance.register_hook(_gain_only)
    cfg = DistillConfig(known_light="given.exr", light_resolution=16)
    sky, sun = trained_environment(light, cfg)
    assert sun is not None and float(sun.direction[0]) > 0.5 and float(sun.direction[2]) > 0.5
    with torch.no_grad():
        assert float(sky.cube().max()) < 0.05 * float(light.cube().max())  # the sun left the sky
    assert trained_environment(light, dataclasses.replace(cfg, known_light=None))[1] is None  # learned: whole
    assert trained_environment(light, dataclasses.replace(cfg, known_light_sun=False))[1] is None
    maps = {"albedo": torch.full((1, 1, 3), 0.5), "roughness": torch.full((1, 1, 1), 0.6),
            "metallic": torch.zeros(1, 1, 1), "normal": sun.direction.reshape(1, 1, 3),
            "view": torch.tensor([[[0.0, 0.0, 1.0]]]), "position": torch.zeros(1, 1, 3),
            "progress": torch.ones(1, 1, 1), "raw": torch.zeros(1, 1, 3)}
    phy = shade_maps(maps, sky, get_brdf_lut(), None, 3, cfg, sun)["phy"]
    assert float(phy[0, 0, 0].detach()) > float(0.5 / math.pi * sun.irradiance[0].detach()) * 0.99  # the sun lights it
    phy.sum().backward()
    grad = light.log_radiance.grad
    assert grad is not None and (grad.reshape(-1, 3)[0] > 0).all()
    assert torch.allclose(grad, grad.reshape(-1, 3)[0].expand_as(grad.reshape(-1, 3)).reshape(grad.shape))


def test_known_light_keeps_its_shape_and_learns_only_a_gain(tmp_path):
    """``known_light``: the run's environment is the given map, turned as asked, times one gain per channel
    that training chose (the images' exposure): texel ratios to the map are one constant per channel. The
    map has a sun, so training shades it split off (``known_light_sun``): the gain trains through it."""
    from prd_blender.trainer.shading.envmap import rotated_environment

    hdri = tmp_path / "surroundings.exr"
    write_exr(hdri, _sunny_sky())
    s1, d = configs()
    d.known_light, d.known_light_rotation = str(hdri), 90.0
    out = tmp_path / "run"
    run_train(SAMPLE, out, resolution=32, config=s1, distill=d, quiet=True)
    learned = EnvironmentLight(16)
    learned.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["light"])
    with torch.no_grad():
        given = EnvironmentLight(16, init=rotated_environment(_sunny_sky(), 90.0))
        ratio = (learned.cube() / given.cube()).reshape(-1, 3)
        unturned = (learned.cube() / EnvironmentLight(16, init=_sunny_sky()).cube()).reshape(-1, 3)
    assert (ratio.std(0) / ratio.mean(0) < 1e-4).all()  # the shape is the map's
    assert (ratio.mean(0) - 1).abs().max() > 0.01  # a gain was fitted
    assert (unturned.std(0) / unturned.mean(0) > 0.1).all()  # and the rotation was applied
    env = read_exr(out / "environment.exr")  # what Blender gets: the same map, turned, at the fitted gain
    expected = rotated_environment(_sunny_sky(), 90.0).numpy() * ratio.mean(0).numpy()
    assert np.corrcoef(env[..., 0].ravel(), np.asarray(
        EnvironmentLight(16, init=expected).to_equirect(256)[..., 0]).ravel())[0, 1] > 0.999
    assert json.loads((out / "run.json").read_text())["distill"]["known_light"] == str(hdri)


def test_train_refuses_a_bad_known_light_before_touching_the_output(tmp_path):
    (tmp_path / "broken.exr").write_bytes(b"not an exr")
    flat = tmp_path / "flat.exr"
    write_exr(flat, np.ones((16, 16, 3), np.float32))  # square: not an equirect map
    for bad, why in (("missing.hdr", "cannot read"), ("broken.exr", "cannot read"), ("flat.exr", "equirectangular")):
        out = tmp_path / f"out_{bad}"
        r = subprocess.run([sys.executable, "-m", "prd_blender.trainer", "train", str(SAMPLE), "--out", str(out),
                            "--resolution", "32", "--light", str(tmp_path / bad)], capture_output=True, text=True)
        assert r.returncode == 2 and "known light" in r.stderr and why in r.stderr, r.stderr
        assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "prd_blender.trainer", "train", str(SAMPLE), "--out", str(tmp_path / "o"),
                        "--stages", "1", "--light", str(flat)], capture_output=True, text=True)
    assert r.returncode == 2 and "--light" in r.stderr
