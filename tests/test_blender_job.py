"""The Blender side driving the real trainer subprocess (CPU, tiny runs), headless bpy.

The UI's own timer callback (``operators.poll_job``) is called in a loop here instead of Blender's event
loop, and every call is timed: that is the main-thread stall a user would feel.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest
from blender_util import (
    SAMPLE,
    bpy_or_skip,
    check_gltf_wiring,
    copy_capture,
    drive,
    enable_addon,
    glb_json,
    reset_props,
)

bpy = bpy_or_skip()

from prd_blender import job as jobmod  # noqa: E402
from prd_blender import operators  # noqa: E402

STALL_LIMIT_S = 0.050


@pytest.fixture()
def scene():
    enable_addon()
    sc = bpy.context.scene
    reset_props(sc)
    yield sc
    if operators.job_running():  # never leave a trainer behind
        operators._job.proc.kill()
        drive(operators.poll_job, 30)


def _start(scene, capture: Path, out: Path, iterations: int, resolution: int = 32, distill: int = 0) -> float:
    scene.prd.transforms_path = str(capture)
    scene.prd.output_dir = str(out)
    scene.prd.iterations = iterations
    scene.prd.distill_iterations = distill
    scene.prd.resolution = resolution
    t0 = time.perf_counter()
    assert bpy.ops.prd.start() == {"FINISHED"}
    return time.perf_counter() - t0


def test_end_to_end_job_import_and_main_thread_stall(scene, tmp_path):
    """capture -> train (4 stages, tiny) -> mesh (cancelled once, resumed) -> automatic import -> relight
    render -> glTF export and re-import, all through the real operators and trainer subprocesses."""
    out = tmp_path / "résultat with spaces"
    scene.prd.build_mesh, scene.prd.auto_import = True, True
    scene.prd.mesh_quality, scene.prd.texture_size = "preview", "512"
    # All four PRD stages: 40 radiance-field iterations, then 3 x 5 material/light iterations. (After 20,
    # the most opaque Gaussian was at 0.31 coverage, a hair above what the mesh step accepts as a surface.)
    start_s = _start(scene, SAMPLE, out, iterations=40, distill=5)
    assert scene.prd.status == "RUNNING" and not bpy.ops.prd.start.poll()  # one job at a time
    seen = []

    where = []  # what each poll call found: to name the worst stalls
    cpu = []  # main-thread CPU time of each call: the add-on's own work, immune to descheduling

    def poll():
        job = operators._job
        gen2 = gc.get_stats()[2]["collections"]
        c0 = time.thread_time()
        r = operators.poll_job()
        cpu.append(time.thread_time() - c0)
        # Label the call: the job phase it found, and whether a full garbage collection ran inside it.
        where.append((f"{job.state.phase}/{job.state.status}" if job else "-")
                     + (" +gc" if gc.get_stats()[2]["collections"] != gen2 else ""))
        seen.append((scene.prd.iteration, scene.prd.total_iterations, scene.prd.progress))
        return r

    # The 4-stage job on a loaded 2-core CI machine can take a while (on 2026-12-04 the mesh step after Resume took
    # 400 s on an otherwise idle machine): the limits guard against a hang, not for speed.
    stalls = drive(poll, 900, until=lambda: scene.prd.stage == 5)
    props = scene.prd
    assert props.status == "RUNNING", props.message
    assert props.iteration == 55 and props.total_iterations == 55 and 0.89 < props.progress < 0.91
    assert props.gaussians > 0 and props.psnr > 0 and props.backend == "cpu"
    assert any(0 < it < 55 for it, _, _ in seen), "progress events arrive while the job runs"
    assert (out / "point_cloud.ply").is_file() and not (out / "mesh.ply").exists()

    # Cancel during the mesh step: the training result stays, Resume builds only the mesh.
    stalls += drive(poll, 30, until=lambda: len(seen) > len(stalls) + 8)
    assert bpy.ops.prd.cancel() == {"FINISHED"}
    stalls += drive(poll, 60)
    assert props.status == "CANCELLED" and "mesh" in props.message, props.message
    assert jobmod.run_needs_mesh_only(out)
    before = set(bpy.data.objects)
    assert bpy.ops.prd.resume() == {"FINISHED"}
    assert operators._job.mesh_only
    stalls += drive(poll, 900)
    assert props.status == "DONE", props.message
    assert props.progress == 1.0 and "mesh of" in props.message and "imported" in props.message
    # The last call imported the result (a one-off, like pressing Import); every other call is polling.
    worst = max(stalls[:-1])
    print(f"\nmain-thread stall: start operator {start_s * 1e3:.1f} ms; poll_job max {worst * 1e3:.2f} ms, "
          f"mean {np.mean(stalls[:-1]) * 1e3:.3f} ms over {len(stalls) - 1} calls; automatic import "
          f"{stalls[-1] * 1e3:.0f} ms")
    print("worst calls:", sorted(((round(d * 1e3, 1), w) for d, w in zip(stalls, where, strict=True)),
                                 reverse=True)[:5])
    # On this 2-core machine shared with other CPU-bound jobs (load ~15) a lone call now and then meets a
    # full garbage collection of the whole process (~80 ms idle, more under load; "+gc") or is descheduled
    # (0.2-0.6 s seen; max 16 ms on quieter runs). What the add-on controls is that polling itself does no
    # real work on the main thread: at most two slow calls without a collection, none near a second.
    slow = [(d, w) for d, w in zip(stalls[:-1], where[:-1], strict=True) if d >= STALL_LIMIT_S]
    assert len([d for d, w in slow if "+gc" not in w]) <= 2 and worst < 1.0 and start_s < 0.25, slow
    # Strict on what the add-on does itself: every polling call's main-thread CPU time (collections aside).
    own = [c for c, w in zip(cpu[:-1], where[:-1], strict=True) if "+gc" not in w]
    print(f"poll_job main-thread CPU time: max {max(own) * 1e3:.2f} ms")
    assert max(own) < STALL_LIMIT_S, max(own)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {"mesh", "texture_albedo", "texture_orm", "texture_normal", "glb"} <= set(manifest["files"])
    # A 40-iteration radiance field is still a noisy cloud: its mesh stays within 4x the preview's 20k faces
    # (it once came out at 320k, and its UV unwrap alone took 466 s), and the message says why it looks rough.
    decimation = manifest["asset"]["decimation"]
    assert decimation["target_faces"] <= 80_000 and manifest["asset"]["faces"] <= 80_000
    assert ("noisy surface" in props.message) == bool(decimation.get("capped")), props.message
    # this venv has bpy, so the mesh step refined the albedo through Cycles
    assert len(manifest["asset"]["refine"]["history"]) == manifest["asset"]["refine"]["steps"] + 1

    # The log: the trainer's JSON lines plus stderr, live in the user folder, copied to the output folder.
    log = Path(props.log_path)
    assert log.is_file() and '"event": "mesh"' in log.read_text(encoding="utf-8")
    assert (out / jobmod.JOB_LOG_NAME).is_file() and (out / "progress.jsonl").is_file()
    assert bpy.ops.prd.open_log() == {"FINISHED"}
    assert '"event": "mesh"' in bpy.data.texts["PRD Log"].as_string()

    # The automatic import: the mesh (main object, glTF-style material), the cameras, the hidden
    # Gaussians preview, the recovered World.
    new = set(bpy.data.objects) - before
    cams = [o for o in new if o.type == "CAMERA"]
    records = json.loads((out / "cameras.json").read_text(encoding="utf-8"))["cameras"]
    assert len(cams) == len(records) == 48
    mesh = props.mesh_object
    assert mesh in new and len(mesh.data.polygons) > 100 and bpy.context.view_layer.objects.active == mesh
    check_gltf_wiring(mesh.active_material)
    gauss = [o for o in new if o.type == "MESH" and o != mesh]
    assert len(gauss) == 1 and len(gauss[0].data.vertices) == manifest["result"]["gaussians"]
    assert gauss[0].hide_get() and gauss[0].hide_render
    attrs = gauss[0].data.attributes
    assert {"color", "opacity", "radius"} <= set(attrs.keys())
    op = np.empty(len(gauss[0].data.vertices), np.float32)
    attrs["opacity"].data.foreach_get("value", op)
    assert 0 <= op.min() and op.max() <= 1
    assert gauss[0].modifiers[0].type == "NODES"
    assert scene.render.resolution_x == 32 and scene.world == props.recovered_world

    # The import operator does the same again on demand.
    before = set(bpy.data.objects)
    t0 = time.perf_counter()
    assert bpy.ops.prd.import_result() == {"FINISHED"}
    print(f"import of mesh + 48 cameras + Gaussians: {(time.perf_counter() - t0) * 1e3:.0f} ms (a user action)")
    assert len([o for o in set(bpy.data.objects) - before if o.type == "MESH"]) == 2

    # Relight under a bundled studio light; the still lands in <output>/relight/.
    props.light_source, props.studio_light, props.render_samples = "STUDIO", "sunset", 4
    t0 = time.perf_counter()
    assert bpy.ops.prd.relight_render() == {"FINISHED"}
    print(f"relit still ({scene.render.resolution_x} px, 4 samples): {time.perf_counter() - t0:.1f} s")
    assert Path(props.last_render).parent == out / "relight" and Path(props.last_render).is_file()

    # glTF export through Blender's exporter: the textures survive into the glb and back.
    glb = tmp_path / "export" / "asset.glb"
    assert bpy.ops.prd.export_glb(filepath=str(glb)) == {"FINISHED"}
    mat = glb_json(glb)["materials"][0]
    assert {"baseColorTexture", "metallicRoughnessTexture"} <= set(mat["pbrMetallicRoughness"])
    assert "normalTexture" in mat and glb.with_name("asset_environment.exr").is_file()
    mats = set(bpy.data.materials)
    assert bpy.ops.import_scene.gltf(filepath=str(glb)) == {"FINISHED"}
    check_gltf_wiring(next(m for m in bpy.data.materials if m not in mats))


def test_imported_camera_projects_like_the_opencv_record(scene, tmp_path):
    """Focal length, principal point (shift) and pose: project a point with Blender and with the record."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    from prd_blender import importer

    out = tmp_path / "o"
    out.mkdir()
    w, h = 64, 48
    w2c = np.eye(4)
    w2c[:3, 3] = [0.1, -0.2, 4.0]  # OpenCV: camera looks down +z
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> Blender camera axes
    c2w_blender = np.linalg.inv(w2c) @ flip
    rec = {"name": "v", "split": "train", "width": w, "height": h, "fx": 70.0, "fy": 70.0, "cx": 30.0, "cy": 27.5,
           "world_to_cam_opencv": w2c.tolist(), "cam_to_world_blender": c2w_blender.tolist(), "image": "v.png"}
    (out / "cameras.json").write_text(json.dumps({"cameras": [rec]}), encoding="utf-8")
    coll = bpy.data.collections.new("t")
    scene.collection.children.link(coll)
    cam = importer.import_cameras(out, coll, scene)[0]
    bpy.context.view_layer.update()
    for p in ([0.3, 0.2, 0.5], [-0.4, 0.1, -0.3]):
        pc = w2c @ np.array(p + [1.0])
        u, v = rec["fx"] * pc[0] / pc[2] + rec["cx"], rec["fy"] * pc[1] / pc[2] + rec["cy"]
        ndc = world_to_camera_view(scene, cam, Vector(p))
        # Blender: (0, 0) bottom-left, (1, 1) top-right of the frame.
        assert ndc.x * w == pytest.approx(u, abs=1e-3) and (1 - ndc.y) * h == pytest.approx(v, abs=1e-3)


def test_cancel_then_resume(scene, tmp_path):
    out = tmp_path / "run"
    _start(scene, SAMPLE, out, iterations=5000)
    drive(operators.poll_job, 120, until=lambda: scene.prd.iteration >= 20)
    assert bpy.ops.prd.cancel() == {"FINISHED"}
    assert scene.prd.status == "CANCELLING"
    drive(operators.poll_job, 90)
    assert scene.prd.status == "CANCELLED", scene.prd.message
    assert "Resume" in scene.prd.message and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["status"] == "cancelled"
    stopped = operators._job.state.checkpoint_iteration
    assert stopped >= 20

    # A new start would clobber the run: refused with a message pointing at Resume.
    with pytest.raises(RuntimeError, match="Resume"):
        bpy.ops.prd.start()
    assert bpy.ops.prd.resume.poll()
    scene.prd.iterations = stopped + 20
    assert bpy.ops.prd.resume() == {"FINISHED"}
    drive(operators.poll_job, 120)
    assert scene.prd.status == "DONE", scene.prd.message
    assert scene.prd.iteration == stopped + 20
    assert (out / "point_cloud.ply").is_file()


def test_cancel_without_signals_as_on_windows(scene, tmp_path, monkeypatch):
    """On Windows CTRL_BREAK cannot reach a trainer started without a console window: the stop file that
    cancel() creates (PRD_STOP_FILE) must stop it with a checkpoint on its own."""
    monkeypatch.setattr(jobmod.BackgroundProcess, "terminate", lambda self: None)
    out = tmp_path / "run"
    _start(scene, SAMPLE, out, iterations=5000)
    drive(operators.poll_job, 120, until=lambda: scene.prd.iteration >= 10)
    assert bpy.ops.prd.cancel() == {"FINISHED"}
    assert operators._job.stop_path.is_file()
    drive(operators.poll_job, 90)
    assert scene.prd.status == "CANCELLED", scene.prd.message
    assert (out / "checkpoint.pt").is_file() and operators._job.state.checkpoint_iteration >= 10
    assert not operators._job.stop_path.exists()  # removed once the job is over


def test_scene_cameras_source_renders_then_trains(scene, tmp_path):
    """Scene Cameras: the scene's cameras are rendered with Cycles in a background bpy process into a
    transforms.json capture beside the output folder, then the trainer runs on it."""
    import math

    from mathutils import Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    enable_addon()
    sc = bpy.context.scene
    reset_props(sc)
    bpy.ops.mesh.primitive_ico_sphere_add(radius=0.6, subdivisions=2)
    mat = bpy.data.materials.new("orange")
    mat.diffuse_color = (1.0, 0.4, 0.1, 1.0)
    bpy.context.object.data.materials.append(mat)
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sc.collection.objects.link(sun)
    cams = []
    for i in range(8):
        a = 2 * math.pi * i / 8
        cam = bpy.data.objects.new(f"cam{i}", bpy.data.cameras.new(f"cam{i}"))
        cam.location = (3 * math.cos(a), 3 * math.sin(a), 1.0 + 0.3 * (i % 2))
        cam.rotation_euler = (-cam.location).to_track_quat("-Z", "Y").to_euler()
        cam.data.shift_x = 0.05  # an off-centre principal point survives the trip
        sc.collection.objects.link(cam)
        cams.append(cam)
    sc.render.resolution_x, sc.render.resolution_y, sc.render.resolution_percentage = 40, 32, 100
    bpy.context.view_layer.update()
    sc.prd.source = "SCENE"
    out = tmp_path / "scene run"
    _start(sc, SAMPLE, out, iterations=10, resolution=40)  # the transforms path is ignored for this source
    assert operators._job.state.phase == "scene"
    drive(operators.poll_job, 300)
    assert sc.prd.status == "DONE", sc.prd.message
    capture = tmp_path / "scene run_scene_capture"
    tf = json.loads((capture / "transforms.json").read_text(encoding="utf-8"))
    assert len(tf["frames"]) == 8 and (capture / "scene.blend").is_file()
    assert '"event": "scene_capture"' in Path(sc.prd.log_path).read_text(encoding="utf-8")
    # The trainer's camera records reproduce the Blender cameras (pose and principal point).
    recs = json.loads((out / "cameras.json").read_text(encoding="utf-8"))["cameras"]
    assert len(recs) == 8
    by_size = {(r["width"], r["height"]) for r in recs}
    assert by_size == {(40, 32)}
    for rec, cam in zip(sorted(recs, key=lambda r: r["name"]), cams, strict=True):
        assert np.allclose(np.array(rec["cam_to_world_blender"]), np.array(cam.matrix_world), atol=1e-4)
        assert rec["cx"] == pytest.approx(20 - 0.05 * 40, abs=1e-3)
        assert rec["fx"] == pytest.approx(cam.data.lens / 36 * 40, rel=1e-4)
    assert (Vector(recs[0]["cam_to_world_blender"][0][:3])).length == pytest.approx(1.0, abs=1e-5)
    # Starting again would overwrite that capture: refused unless asked.
    sc.prd.overwrite = False
    with pytest.raises(RuntimeError, match="already"):
        bpy.ops.prd.start()


def test_corrupt_image_names_the_file(scene, tmp_path):
    cap = copy_capture(tmp_path / "capture ü é")
    (cap / "train" / "r_005.png").write_bytes(b"this is not a png")
    _start(scene, cap, tmp_path / "out ø", iterations=20)
    drive(operators.poll_job, 120)
    assert scene.prd.status == "FAILED"
    assert "r_005.png" in scene.prd.message, scene.prd.message
    assert scene.prd.message.startswith("Bad input")


def test_missing_interpreter_is_a_clear_message(scene, tmp_path):
    prefs = enable_addon()
    prefs.python_path = str(tmp_path / "no such env" / "python")
    scene.prd.transforms_path = str(SAMPLE)
    scene.prd.output_dir = str(tmp_path / "o")
    with pytest.raises(RuntimeError, match="Trainer Python not found"):
        bpy.ops.prd.start()
    assert scene.prd.status == "FAILED" and "preferences" in scene.prd.message
    assert not operators.job_running()
    prefs.python_path = ""
    with pytest.raises(RuntimeError, match="No trainer Python is set"):
        bpy.ops.prd.start()


def test_cuda_requested_without_cuda_is_a_clear_message(scene, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    scene.prd.device = "cuda"
    _start(scene, SAMPLE, tmp_path / "o", iterations=5)
    drive(operators.poll_job, 120)
    assert scene.prd.status == "FAILED"
    assert "CUDA" in scene.prd.message and "Device: CPU" in scene.prd.message, scene.prd.message


def test_photo_folder_source(scene):
    from prd_blender.properties import source_problem

    # A photo folder goes straight to `prd train PHOTOS` (which runs structure from motion first).
    scene.prd.source = "PHOTOS"
    assert bpy.ops.prd.start.poll() and source_problem("PHOTOS") == ""
    scene.prd.photos_path = "/photos"
    assert scene.prd.capture_path() == "/photos"
    ev = {"event": "poses", "step": "features", "done": 3, "total": 40}
    assert jobmod._poses_message(ev) == "Camera poses: features 3/40"
    scene.prd.source = "TRANSFORMS"
    with pytest.raises(RuntimeError, match="output folder"):
        bpy.ops.prd.start()


def test_train_command_and_failure_messages(tmp_path):
    argv = jobmod.train_command("py", "cap dir", tmp_path / "ø", iterations=10, resolution=32, device="cpu")
    assert argv == ["py", "-m", "prd_blender.trainer", "train", "cap dir", "--out", str(tmp_path / "ø"),
                    "--device", "cpu", "--iterations", "10", "--resolution", "32"]
    resume = jobmod.train_command("py", "c", "o", iterations=10, resolution=32, resume=True, overwrite=True)
    assert "--resume" in resume and "--resolution" not in resume and "--overwrite" not in resume
    # A trainer Python without torch: the message says what to do.
    j = jobmod.TrainerJob("py", "c", tmp_path / "o")
    j.proc = jobmod.BackgroundProcess(["x"])
    j.proc.stderr_tail.extend(["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'torch'"])
    assert "no torch" in j._failure_message(1)
    assert "killed" in j._failure_message(-9)


def test_no_bare_metal_reaches_the_trainer(scene, tmp_path):
    """The panel's No Bare Metal: the trainer runs with the dielectric prior and the run records it; without the
    material stages, or on resume (the run keeps its own), nothing is passed."""
    from prd_blender.trainer.train.distill import DIELECTRIC_PRIOR

    out = tmp_path / "o"
    scene.prd.dielectric = True
    _start(scene, SAMPLE, out, iterations=10, distill=2)
    drive(operators.poll_job, 180)
    assert scene.prd.status == "DONE", scene.prd.message
    assert json.loads((out / "run.json").read_text())["distill"]["metallic_weight"] == DIELECTRIC_PRIOR
    assert "--dielectric" in jobmod.train_command("py", "c", "o", distill_iterations=5, dielectric=True)
    assert "--dielectric" not in jobmod.train_command("py", "c", "o", distill_iterations=0, dielectric=True)
    assert "--dielectric" not in jobmod.train_command("py", "c", "o", resume=True, dielectric=True)


def test_known_lighting_is_checked_then_reaches_the_trainer(scene, tmp_path):
    """The panel's Known Lighting: a missing or non-HDR file is refused before anything starts; a real one
    reaches the trainer (turned as set) and the run records it; a resumed run keeps its own."""
    import math

    from prd_blender.trainer.shading.hdr_io import write_exr

    out = tmp_path / "o"
    scene.prd.use_known_light, scene.prd.distill_iterations = True, 2
    scene.prd.transforms_path, scene.prd.output_dir = str(SAMPLE), str(out)
    with pytest.raises(RuntimeError, match="choose the capture's HDRI"):
        bpy.ops.prd.start()
    (tmp_path / "sky.png").write_bytes(b"png")
    scene.prd.known_light_path = str(tmp_path / "sky.png")
    with pytest.raises(RuntimeError, match=r"not an \.hdr or \.exr"):
        bpy.ops.prd.start()
    scene.prd.known_light_path = str(tmp_path / "sky.exr")
    write_exr(tmp_path / "sky.exr", np.linspace(2.0, 0.1, 16 * 32 * 3, dtype=np.float32).reshape(16, 32, 3))
    scene.prd.distill_iterations = 0
    with pytest.raises(RuntimeError, match="material stages"):
        bpy.ops.prd.start()
    assert not operators.job_running() and not out.exists()  # nothing started, nothing written
    scene.prd.known_light_rotation = math.radians(90.0)
    _start(scene, SAMPLE, out, iterations=10, distill=2)
    drive(operators.poll_job, 180)
    assert scene.prd.status == "DONE", scene.prd.message
    distill = json.loads((out / "run.json").read_text())["distill"]
    assert distill["known_light"] == str(tmp_path / "sky.exr") and distill["known_light_rotation"] == 90.0
    argv = jobmod.train_command("py", "c", "o", resume=True, light=("sky.exr", 90.0))
    assert "--light" not in argv
