"""The asset side of the extension on a small hand-made run folder (headless bpy, real Cycles, real glTF
add-on): mesh import with the glTF-style material, Relight, glTF export and re-import, the mesh step of
the job. The full chain on a real trained run is in test_blender_job.py (end-to-end test)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from blender_util import bpy_or_skip, check_gltf_wiring, drive, enable_addon, glb_json, reset_props

bpy = bpy_or_skip()

from prd_blender import job as jobmod  # noqa: E402
from prd_blender import operators  # noqa: E402


def _sphere(n_lat: int = 12, n_lon: int = 24):
    """A UV sphere with a seam (per-vertex UVs, like the baker's split vertices), outward normals."""
    lat = np.linspace(0, math.pi, n_lat + 1)
    lon = np.linspace(0, 2 * math.pi, n_lon + 1)
    th, ph = np.meshgrid(lat, lon, indexing="ij")
    nrm = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    uv = np.stack([ph / (2 * math.pi), 1 - th / math.pi], -1).reshape(-1, 2)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
    pos = 0.5 * nrm
    tri = pos[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return pos, nrm, uv, faces[area > 1e-9]  # the pole triangles have zero area


def _write_mesh_ply(path: Path, pos, nrm, uv, faces) -> None:
    vert = np.zeros(len(pos), dtype=[(k, "<f4") for k in ("x", "y", "z", "nx", "ny", "nz", "s", "t")])
    for i, k in enumerate("xyz"):
        vert[k], vert["n" + k] = pos[:, i], nrm[:, i]
    vert["s"], vert["t"] = uv[:, 0], uv[:, 1]
    face = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"], face["i"] = 3, faces
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(pos)}\n"
              + "".join(f"property float {k}\n" for k in vert.dtype.names)
              + f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    path.write_bytes(header.encode() + vert.tobytes() + face.tobytes())


def _write_exr(path: Path, rgb) -> None:
    import OpenEXR

    img = np.empty((8, 16, 3), np.float32)
    img[:] = rgb
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {"RGB": img}).write(str(path))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run as `prd train` + `prd mesh` leave it, with a sphere for the mesh."""
    from PIL import Image

    run = tmp_path_factory.mktemp("runs") / "sphere run ü"
    run.mkdir()
    pos, nrm, uv, faces = _sphere()
    _write_mesh_ply(run / "mesh.ply", pos, nrm, uv, faces)
    Image.new("RGB", (16, 16), (200, 60, 40)).save(run / "mesh_albedo.png")
    Image.new("RGB", (16, 16), (255, 128, 0)).save(run / "mesh_orm.png")  # roughness 0.5, metallic 0
    Image.new("RGB", (16, 16), (128, 128, 255)).save(run / "mesh_normal.png")  # flat
    _write_exr(run / "environment.exr", (0.8, 0.8, 0.8))
    g = np.zeros(3, dtype=[(k, "<f4") for k in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                "scale_0", "scale_1", "scale_2")])
    g["x"] = [0, 0.1, 0.2]
    (run / "point_cloud.ply").write_bytes(
        ("ply\nformat binary_little_endian 1.0\nelement vertex 3\n"
         + "".join(f"property float {k}\n" for k in g.dtype.names) + "end_header\n").encode() + g.tobytes())
    cams = []
    for i, (split, az) in enumerate((("train", 0.0), ("test", 90.0))):
        a = math.radians(az)
        eye = np.array([3 * math.cos(a), 3 * math.sin(a), 0.0])
        fwd = -eye / np.linalg.norm(eye)  # Blender camera: looks down -Z, +Y up
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, eye
        cams.append({"name": f"v{i}", "split": split, "width": 24, "height": 24, "fx": 40.0, "fy": 40.0,
                     "cx": 12.0, "cy": 12.0, "cam_to_world_blender": c2w.tolist(), "image": f"v{i}.png"})
    (run / "cameras.json").write_text(json.dumps({"cameras": cams}), encoding="utf-8")
    files = {"gaussians": "point_cloud.ply", "cameras": "cameras.json", "environment": "environment.exr",
             "mesh": "mesh.ply", "texture_albedo": "mesh_albedo.png", "texture_orm": "mesh_orm.png",
             "texture_normal": "mesh_normal.png"}
    (run / "manifest.json").write_text(json.dumps(
        {"format": "prd-output", "version": 1, "status": "complete", "stage": 4, "files": files}), encoding="utf-8")
    return run


@pytest.fixture()
def scene():
    enable_addon()
    bpy.ops.wm.read_factory_settings(use_empty=True)  # no default cube in the renders
    enable_addon()
    sc = bpy.context.scene
    reset_props(sc)
    yield sc
    if operators.job_running():  # never leave a trainer behind
        operators._job.proc.kill()
        drive(operators.poll_job, 30)


def test_import_makes_the_mesh_the_main_object(scene, run_dir):
    assert bpy.ops.prd.import_result(directory=str(run_dir)) == {"FINISHED"}
    mesh = scene.prd.mesh_object
    assert mesh is not None and mesh.type == "MESH"
    assert bpy.context.view_layer.objects.active == mesh and mesh.select_get()
    assert len(mesh.data.polygons) == len(_sphere()[3]) and mesh.data.uv_layers.keys() == ["UVMap"]
    assert all(p.use_smooth for p in mesh.data.polygons) and mesh.data.has_custom_normals
    # The baker's vertex normals are kept (the normal map's tangent frame depends on them).
    corner = np.empty(len(mesh.data.loops) * 3, np.float32)
    mesh.data.corner_normals.foreach_get("vector", corner)
    pos = np.array([mesh.data.vertices[lp.vertex_index].co for lp in mesh.data.loops])
    assert np.allclose(corner.reshape(-1, 3), pos / np.linalg.norm(pos, axis=1, keepdims=True), atol=1e-3)
    imgs = check_gltf_wiring(mesh.active_material)
    assert Path(imgs["albedo"].filepath).name == "mesh_albedo.png"
    assert imgs["normal_map"].uv_map == "UVMap"
    # The Gaussians are only a hidden, unrendered preview next to the mesh.
    gauss = next(o for o in scene.objects if o.name.startswith("PRD Gaussians"))
    assert gauss.hide_get() and gauss.hide_render
    # A held-out capture camera frames the render; the recovered World is set and protected.
    assert scene.camera is not None and scene.camera.get("prd_split") == "test"
    assert scene.world == scene.prd.recovered_world and scene.world.use_fake_user


def test_import_without_mesh_shows_the_gaussians(scene, run_dir, tmp_path):
    import shutil

    run = tmp_path / "no mesh"
    shutil.copytree(run_dir, run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    for role in ("mesh", "texture_albedo", "texture_orm", "texture_normal"):
        manifest["files"].pop(role)
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert bpy.ops.prd.import_result(directory=str(run)) == {"FINISHED"}
    gauss = bpy.context.view_layer.objects.active
    assert gauss.name.startswith("PRD Gaussians") and not gauss.hide_get()
    assert not bpy.ops.prd.export_glb.poll()
    from prd_blender import importer

    with pytest.raises(importer.ImportError_, match="no mesh"):
        importer.import_mesh(run, scene.collection)
    (run_dir / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    manifest["files"]["mesh"] = "broken.ply"
    with pytest.raises(importer.ImportError_, match="binary"):
        importer.import_mesh(run_dir, scene.collection, manifest)


def _mean_render(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float32).mean((0, 1))


def test_relight_bundled_and_file_hdri_render_and_switch_back(scene, run_dir, tmp_path):
    from prd_blender import properties

    bpy.ops.prd.import_result(directory=str(run_dir))
    recovered = scene.world
    props = scene.prd
    props.render_samples = 4
    scene.render.engine = "BLENDER_EEVEE"  # the user's own setting, restored after the relight render
    assert "forest" in properties.studio_lights()  # Blender's bundled world HDRIs are found
    props.light_source, props.studio_light = "STUDIO", "forest"
    props.light_rotation, props.light_strength = math.radians(90), 2.0
    props.render_path = str(tmp_path / "renders") + "/"
    assert bpy.ops.prd.relight_render() == {"FINISHED"}
    first = Path(props.last_render)
    assert first == tmp_path / "renders" / "forest_90deg.png" and first.is_file()
    world = scene.world
    assert world.name == "PRD Relight" and world != recovered
    mapping = next(n for n in world.node_tree.nodes if n.type == "MAPPING")
    assert mapping.inputs["Rotation"].default_value[2] == pytest.approx(math.radians(90))
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    assert bg.inputs["Strength"].default_value == pytest.approx(2.0)
    assert scene.render.engine == "BLENDER_EEVEE"
    # Rendering again never replaces the earlier still.
    assert bpy.ops.prd.relight_render() == {"FINISHED"}
    assert Path(props.last_render).name == "forest_90deg_001.png" and first.is_file()

    # A file HDRI: a dim blue one gives a darker, bluer render. The World is reused, not multiplied.
    hdri = tmp_path / "blue.exr"
    _write_exr(hdri, (0.02, 0.05, 0.4))
    props.light_source, props.hdri_path, props.light_strength = "FILE", str(hdri), 1.0
    assert bpy.ops.prd.relight_render(filepath=str(tmp_path / "blue.png")) == {"FINISHED"}
    blue, forest = _mean_render(tmp_path / "blue.png"), _mean_render(first)
    assert blue[2] > blue[0] and blue.sum() < forest.sum(), (blue, forest)
    assert sum(w.name.startswith("PRD Relight") for w in bpy.data.worlds) == 1

    assert bpy.ops.prd.recovered_world() == {"FINISHED"} and scene.world == recovered

    # The render-job path of the UI (invoke): Blender calls the render_complete handler, which saves the
    # still and restores the settings; render_cancel only restores them. (Headless bpy has no window for
    # the job itself; a blocking render fires the same handlers.)
    from prd_blender import relight

    def arm(name: str) -> None:
        relight._pending = relight.StillRender(scene, tmp_path / name, 2)
        bpy.app.handlers.render_complete.append(relight._on_render_complete)
        bpy.app.handlers.render_cancel.append(relight._on_render_cancel)
        assert scene.render.engine == "CYCLES"

    arm("job.png")
    bpy.ops.render.render()
    assert (tmp_path / "job.png").is_file() and props.last_render == str(tmp_path / "job.png")
    arm("cancelled.png")
    relight._on_render_cancel(scene)
    assert not (tmp_path / "cancelled.png").exists()
    assert scene.render.engine == "BLENDER_EEVEE" and relight._pending is None
    assert relight._on_render_complete not in bpy.app.handlers.render_complete
    assert relight._on_render_cancel not in bpy.app.handlers.render_cancel

    props.hdri_path = str(tmp_path / "missing.hdr")
    with pytest.raises(RuntimeError, match="HDRI not found"):
        bpy.ops.prd.relight_render()
    props.hdri_path = str(tmp_path / "blue.png")
    with pytest.raises(RuntimeError, match="not an HDRI"):
        bpy.ops.prd.relight_world()


def test_export_glb_keeps_the_textures_and_reimports(scene, run_dir, tmp_path):
    bpy.ops.prd.import_result(directory=str(run_dir))
    mesh = scene.prd.mesh_object
    other = bpy.data.objects.new("user's empty", None)
    scene.collection.objects.link(other)
    other.select_set(True)
    out = tmp_path / "export ü" / "asset.glb"
    assert bpy.ops.prd.export_glb(filepath=str(out)) == {"FINISHED"}
    assert other.select_get()  # the user's selection is given back
    exr = out.with_name("asset_environment.exr")
    assert exr.read_bytes() == (run_dir / "environment.exr").read_bytes()
    gltf = glb_json(out)
    assert len(gltf["meshes"]) == 1 and len(gltf["materials"]) == 1  # the mesh only: no preview, cameras
    mat = gltf["materials"][0]
    pbr = mat["pbrMetallicRoughness"]
    assert {"baseColorTexture", "metallicRoughnessTexture"} <= set(pbr) and "normalTexture" in mat
    attrs = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert {"POSITION", "NORMAL", "TEXCOORD_0", "TANGENT"} <= set(attrs)
    assert all(img.get("mimeType") == "image/png" for img in gltf["images"])

    # Never silently replaced.
    with pytest.raises(RuntimeError, match="already exist"):
        bpy.ops.prd.export_glb(filepath=str(out))
    assert bpy.ops.prd.export_glb(filepath=str(out), overwrite=True) == {"FINISHED"}

    # Blender's importer rebuilds the same wiring from the glb.
    before = set(bpy.data.materials)
    assert bpy.ops.import_scene.gltf(filepath=str(out)) == {"FINISHED"}
    new = [m for m in bpy.data.materials if m not in before]
    assert len(new) == 1
    check_gltf_wiring(new[0])
    assert mesh.name in scene.objects


def test_mesh_step_commands_and_presets(tmp_path):
    argv = jobmod.mesh_command("py", tmp_path / "ø", "preview", 512, "cpu")
    assert argv == ["py", "-m", "prd_blender.trainer", "mesh", str(tmp_path / "ø"), "--quality", "preview",
                    "--texture-size", "512", "--device", "cpu"]
    enable_addon()
    props = bpy.context.scene.prd
    reset_props(bpy.context.scene)
    props.build_mesh = True
    for q, preset in jobmod.MESH_PRESETS.items():
        props.quality = q
        assert operators._mesh_settings(props) == preset
    props.quality, props.mesh_quality, props.texture_size = "CUSTOM", "high", "2048"
    assert operators._mesh_settings(props) == ("high", 2048)
    props.build_mesh = False
    assert operators._mesh_settings(props) is None
    # Progress: training fills 90 % of the bar, the mesh step the rest, and only "done" is 100 %.
    s = jobmod.JobState(iteration=50, iterations=100, with_mesh=True, status="running")
    assert s.fraction == pytest.approx(0.45)
    s.phase, s.mesh_fraction = "mesh", 0.99
    assert 0.9 < s.fraction < 1.0
    s.status = "done"
    assert s.fraction == 1.0


def test_mesh_step_failure_keeps_the_training_result(scene, run_dir, tmp_path):
    """Resume on a finished run without a mesh runs only `prd mesh` (real subprocess); here the Gaussians
    are garbage, so it fails, and the message says the training result is still there."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"] = {"gaussians": "point_cloud.ply", "cameras": "cameras.json"}
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (run / "checkpoint.pt").write_bytes(b"")
    assert jobmod.run_needs_mesh_only(run) and not jobmod.run_needs_mesh_only(run_dir)
    scene.prd.output_dir = str(run)
    scene.prd.quality, scene.prd.build_mesh = "PREVIEW", True
    enable_addon().python_path = sys.executable
    assert bpy.ops.prd.resume() == {"FINISHED"}
    assert operators._job.mesh_only and operators._job.proc.argv[3] == "mesh"
    assert scene.prd.stage == 5  # the panel shows "Mesh"
    drive(operators.poll_job, 120)
    assert scene.prd.status == "FAILED"
    assert scene.prd.message.startswith("Training finished, but building the mesh failed"), scene.prd.message
