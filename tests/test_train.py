"""Stage-1 training end to end on the bundled sample capture at 32 px: outputs, resume, kill, cancel."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prd_blender.trainer.outputs import OutputFolderError
from prd_blender.trainer.pipeline import run_train
from prd_blender.trainer.train.checkpoint import save_checkpoint
from prd_blender.trainer.train.densify import DensifyStrategy
from prd_blender.trainer.train.gaussians import read_ply
from prd_blender.trainer.train.stage1 import Stage1Config

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sample_capture"


def small_config(iterations: int = 40) -> Stage1Config:
    return Stage1Config(
        iterations=iterations, init_random=1500, sh_every=10, checkpoint_every=10, log_every=5,
        densify=DensifyStrategy(start=10, every=10, reset_every=25, stop=1000),
    )


def prd(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prd_blender.trainer", *args], capture_output=True, text=True, timeout=600, **kw
    )


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_train_cli_writes_outputs_and_progress(tmp_path):
    out = tmp_path / "out dir ü"  # spaces and non-ASCII in paths
    r = prd("train", str(SAMPLE), "--out", str(out), "--resolution", "32", "--iterations", "30", "--hold-out", "8",
            "--stages", "1")
    assert r.returncode == 0, r.stderr
    ev = events(r.stdout)
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "backend" and "done" in kinds
    prog = [e for e in ev if e["event"] == "progress"]
    assert prog and {"stage", "iteration", "loss", "psnr", "gaussians", "eta_s"} <= prog[-1].keys()
    assert prog[-1]["iteration"] == 30
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["backend"] == "cpu"
    for f in manifest["files"].values():
        assert (out / f).is_file(), f
    params, extra = read_ply(out / manifest["files"]["gaussians"])
    assert params["means"].shape[0] == manifest["result"]["gaussians"] and not extra
    assert torch.isfinite(params["means"]).all()
    ev_json = json.loads((out / "eval.json").read_text())
    assert len(ev_json["views"]) == 6 and 5 < ev_json["psnr"] < 60
    cams = json.loads((out / "cameras.json").read_text())["cameras"]
    assert len(cams) == 48 and cams[0]["width"] == 32
    # the log file holds the same events as stdout
    assert len(events((out / "progress.jsonl").read_text())) == len(ev)

    r2 = prd("eval", str(out))
    assert r2.returncode == 0, r2.stderr
    assert abs(events(r2.stdout)[0]["psnr"] - ev_json["psnr"]) < 1e-4


def test_training_improves_the_fit(tmp_path):
    m = run_train(SAMPLE, tmp_path / "o", resolution=32, hold_out_every=8, config=small_config(120), quiet=True)
    log = events((tmp_path / "o" / "progress.jsonl").read_text())
    prog = [e for e in log if e["event"] == "progress"]
    assert prog[-1]["psnr"] > prog[0]["psnr"] + 5
    assert m["result"]["psnr"] > 18
    assert any(e["event"] == "densify" for e in log)


@pytest.mark.parametrize("random_background", [False, True])
def test_resume_is_exact(tmp_path, random_background):
    cfg = small_config()
    cfg.random_background = random_background
    run_train(SAMPLE, tmp_path / "a", resolution=32, config=cfg, quiet=True)
    run_train(SAMPLE, tmp_path / "b", resolution=32, config=cfg, stop_at=23, quiet=True)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "paused"
    run_train(SAMPLE, tmp_path / "b", resume=True, quiet=True)
    a, _ = read_ply(tmp_path / "a" / "point_cloud.ply")
    b, _ = read_ply(tmp_path / "b" / "point_cloud.ply")
    assert a["means"].shape == b["means"].shape
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_output_folder_is_never_overwritten_silently(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(OutputFolderError, match="not a prd output folder"):
        run_train(SAMPLE, user, resolution=32, config=small_config(5), quiet=True)
    with pytest.raises(OutputFolderError, match="not a prd output folder"):
        run_train(SAMPLE, user, resolution=32, config=small_config(5), overwrite=True, quiet=True)
    assert (user / "notes.txt").read_text() == "precious" and len(list(user.iterdir())) == 1

    out = tmp_path / "run"
    run_train(SAMPLE, out, resolution=32, config=small_config(5), quiet=True)
    r = prd("train", str(SAMPLE), "--out", str(out), "--resolution", "32", "--iterations", "5", "--stages", "1")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    (out / "keep.txt").write_text("mine")
    run_train(SAMPLE, out, resolution=32, config=small_config(5), overwrite=True, quiet=True)
    assert (out / "keep.txt").read_text() == "mine"  # only the run's own files are replaced


def test_killed_trainer_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prd_blender.trainer", "train", str(SAMPLE), "--out", str(out), "--resolution", "32",
         "--iterations", "400", "--stages", "1"],
        stdout=subprocess.PIPE, text=True,
    )
    ckpt_iter = None
    for line in proc.stdout:
        e = json.loads(line)
        if e["event"] == "checkpoint":
            ckpt_iter = e["iteration"]
            break
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert ckpt_iter is not None
    r = prd("train", str(SAMPLE), "--out", str(out), "--resume", "--iterations", str(ckpt_iter + 10))
    assert r.returncode == 0, r.stderr
    prog = [e for e in events(r.stdout) if e["event"] == "progress"]
    assert prog[0]["iteration"] > ckpt_iter and prog[-1]["iteration"] == ckpt_iter + 10


def test_sigterm_cancels_cleanly_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prd_blender.trainer", "train", str(SAMPLE), "--out", str(out), "--resolution", "32",
         "--iterations", "100000", "--stages", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for line in proc.stdout:
        if json.loads(line)["event"] == "progress":
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    kinds = [e["event"] for e in events(rest)]
    assert "checkpoint" in kinds and kinds[-1] == "cancelled"
    assert json.loads((out / "manifest.json").read_text())["status"] == "cancelled"
    assert (out / "checkpoint.pt").is_file()


def test_bad_capture_gives_a_clear_error(tmp_path):
    cap = tmp_path / "cap"
    cap.mkdir()
    frames = json.loads((SAMPLE / "transforms_train.json").read_text())
    (cap / "transforms.json").write_text(json.dumps(frames))
    (cap / "train").mkdir()
    for f in frames["frames"]:
        src = SAMPLE / (f["file_path"] + ".png")
        (cap / (f["file_path"] + ".png")).write_bytes(src.read_bytes())
    bad = cap / (frames["frames"][3]["file_path"] + ".png")
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    r = prd("train", str(cap), "--out", str(tmp_path / "o"), "--resolution", "32", "--stages", "1")
    assert r.returncode == 2
    assert bad.name in r.stderr
    err = [e for e in events(r.stdout) if e["event"] == "error"]
    assert err and bad.name in err[0]["message"]


def test_dielectric_flag_turns_the_metallic_prior_on(tmp_path):
    from prd_blender.trainer.train.distill import DIELECTRIC_PRIOR

    for flag, want in (([], 0.0), (["--dielectric"], DIELECTRIC_PRIOR)):
        out = tmp_path / str(bool(flag))
        r = prd("train", str(SAMPLE), "--out", str(out), "--resolution", "32", "--iterations", "20",
                "--distill-iterations", "2", "--quiet", *flag)
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "run.json").read_text())["distill"]["metallic_weight"] == want


def test_empty_distillation_stages_are_refused_before_anything_runs(tmp_path):
    # stages 2-4 of 0 iterations once crashed after stage 1 ("'NoneType' object has no attribute 'save'")
    r = prd("train", str(SAMPLE), "--out", str(tmp_path / "o"), "--distill-iterations", "0")
    assert r.returncode == 2 and "--distill-iterations must be at least 1" in r.stderr
    assert not (tmp_path / "o").exists()


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1, "params": {"x": torch.ones(3)}})
    before = path.read_bytes()
    (tmp_path / "checkpoint.pt.tmp").symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(OSError):
        save_checkpoint(path, {"iteration": 2, "params": {"x": torch.zeros(1000)}})
    assert path.read_bytes() == before
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_initialises_from_sparse_points(tmp_path):
    """COLMAP-style points seed the Gaussians (one per point) instead of random ones."""
    from prd_blender.trainer.capture import load_capture
    from prd_blender.trainer.train.progress import Progress
    from prd_blender.trainer.train.stage1 import train_stage1

    cap = load_capture(SAMPLE, resolution=32)
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=0.3, size=(500, 3)).astype(np.float32)
    cols = rng.random((500, 3)).astype(np.float32)
    prog = Progress(tmp_path / "log.jsonl", quiet=True)
    cfg = small_config(3)
    model, info = train_stage1(cap.views, cfg, tmp_path, prog, "cpu", cap.background, points=(pts, cols))
    prog.close()
    init = [e for e in events((tmp_path / "log.jsonl").read_text()) if e["event"] == "init"][0]
    assert init["gaussians"] == 500 and "sparse points" in init["how"]
    assert info["iteration"] == 3


def test_progress_timing_fields_are_sane(tmp_path):
    run_train(SAMPLE, tmp_path / "o", resolution=32, config=small_config(20), quiet=True)
    prog = [e for e in events((tmp_path / "o" / "progress.jsonl").read_text()) if e["event"] == "progress"]
    assert all(p["eta_s"] >= 0 and p["elapsed_s"] >= 0 for p in prog)
    assert prog[-1]["eta_s"] == 0
    assert time.time() - prog[-1]["t"] < 600


def test_trains_on_a_colmap_model_with_points(tmp_path):
    """The sample capture rewritten as a binary COLMAP project (images/ + sparse/0 with points)."""
    import shutil

    from prd_blender.trainer.capture import load_capture
    from prd_blender.trainer.capture.colmap import ColmapCamera, ColmapImage, rotmat_to_qvec, write_model

    cap = load_capture(SAMPLE)
    proj = tmp_path / "colmap project"
    (proj / "images").mkdir(parents=True)
    v0 = cap.views[0]
    cams = [ColmapCamera(1, "PINHOLE", v0.width, v0.height, (v0.K[0, 0], v0.K[1, 1], v0.K[0, 2], v0.K[1, 2]))]
    images = []
    for i, v in enumerate(cap.views):
        name = f"img_{i:03d}.png"
        shutil.copy(v.path, proj / "images" / name)
        w2c = v.world_to_cam
        images.append(ColmapImage(i + 1, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], 1, name))
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=0.3, size=(400, 3))
    write_model(proj / "sparse" / "0", cams, images, pts, rng.random((400, 3)))
    r = prd("train", str(proj), "--out", str(tmp_path / "o"), "--resolution", "32", "--iterations", "5",
            "--stages", "1")
    assert r.returncode == 0, r.stderr
    ev = events(r.stdout)
    init = [e for e in ev if e["event"] == "init"][0]
    assert init["gaussians"] == 400 and "sparse points" in init["how"]
    assert [e for e in ev if e["event"] == "capture"][0]["source"] == "colmap"


def _stage1_term_after_training(tmp_path: Path, field: str, weights: tuple, measure, capture: Path = SAMPLE) -> dict:
    """Train stage 1 on ``capture`` at 32 px with ``field`` at each weight (same seed and iterations), and
    return each weight's mean of ``measure(model, cam, background)`` over the training views."""
    from prd_blender.trainer.capture import load_capture
    from prd_blender.trainer.train.progress import Progress
    from prd_blender.trainer.train.render import Camera
    from prd_blender.trainer.train.stage1 import train_stage1

    cap = load_capture(capture, resolution=32)
    means = {}
    for weight in weights:
        cfg = Stage1Config(iterations=150, init_random=1500, sh_every=30, checkpoint_every=1000, log_every=50,
                           densify=DensifyStrategy(start=10, every=10, reset_every=60, stop=1000),
                           normal_start=0.3, **{field: weight})
        out_dir = tmp_path / f"{field}_{weight}"
        out_dir.mkdir()
        model, _ = train_stage1(cap.views, cfg, out_dir, Progress(None, quiet=True), "cpu", cap.background)
        with torch.no_grad():
            terms = [measure(model, Camera.from_view(v), torch.tensor(cap.background)) for v in cap.views]
        means[weight] = float(np.mean(terms))
    return means


def test_stage1_normal_consistency_aligns_the_gaussians_with_their_depth_surface(tmp_path):
    """With ``normal_weight`` the splatted normals agree better with the rendered depth surface's (the term
    it minimises), measured on every training view after the same number of iterations."""
    from prd_blender.trainer.train.render import normal_consistency, render_radiance, splatted_normals

    def measure(model, cam, bg):
        _, out = render_radiance(model, cam, 1, "cpu", bg, normals=True)
        return float(normal_consistency(splatted_normals(out), out.alpha[..., None], out.depth[..., None], cam))

    disagreement = _stage1_term_after_training(tmp_path, "normal_weight", (0.0, 0.2), measure)
    assert disagreement[0.2] < 0.85 * disagreement[0.0], disagreement


def test_stage1_depth_distortion_gathers_each_ray(tmp_path):
    """With ``distortion_weight`` each pixel's blend weights lie closer together in depth (the term it
    minimises), measured on every training view after the same number of iterations."""
    from prd_blender.trainer.train.losses import depth_distortion
    from prd_blender.trainer.train.render import depth_spread_channel, render_radiance

    def measure(model, cam, bg):
        channel, ref = depth_spread_channel(model, cam)
        _, out = render_radiance(model, cam, 1, "cpu", bg, extra=channel)
        return float(depth_distortion(out.features[..., -1:], out.alpha[..., None], out.depth[..., None], ref))

    spread = _stage1_term_after_training(tmp_path, "distortion_weight", (0.0, 100.0), measure)
    assert spread[100.0] < 0.8 * spread[0.0], spread


def test_stage1_random_background_recovers_a_silhouette_the_background_hides(tmp_path):
    """A white object over a white background: its alpha alone tells where it is. Over the fixed white every
    coverage fits the pixels equally well (here the Gaussians are all pruned); over a colour drawn per iteration
    (``random_background``) only the object's own silhouette does."""
    from PIL import Image

    from prd_blender.trainer.train.render import render_radiance

    white = tmp_path / "white"
    shutil.copytree(SAMPLE, white)
    for f in (white / "train").glob("*.png"):
        rgba = np.asarray(Image.open(f)).copy()
        rgba[..., :3] = 255
        Image.fromarray(rgba).save(f)

    def measure(model, cam, bg):
        _, out = render_radiance(model, cam, 1, "cpu", bg)
        return float((out.alpha.reshape(cam.mask.shape) - cam.mask).abs().mean())

    error = _stage1_term_after_training(tmp_path, "random_background", (False, True), measure, capture=white)
    assert error[True] < 0.3 * error[False], error
    assert error[True] < 0.08, error
