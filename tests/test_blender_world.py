"""The recovered environment becomes the World the glTF-friendly way, oriented like Cycles expects."""

import json
import math

import numpy as np
import pytest
from blender_util import bpy_or_skip

bpy = bpy_or_skip()


def _write_env(path, height: int = 32) -> None:
    """Red towards world +X, blue towards -X, grey elsewhere, in Blender's equirect convention."""
    import OpenEXR

    w = 2 * height
    v = 1 - (np.arange(height) + 0.5) / height
    u = (np.arange(w) + 0.5) / w
    theta = (1 - v)[:, None] * math.pi
    phi = (0.5 - u)[None, :] * 2 * math.pi
    x = np.cos(phi) * np.sin(theta)
    img = np.full((height, w, 3), 0.2, np.float32)
    img[x > 0.6] = (1.0, 0.0, 0.0)
    img[x < -0.6] = (0.0, 0.0, 1.0)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"RGB": img}).write(str(path))


def _render_towards(scene, direction: str) -> np.ndarray:
    cam_data = bpy.data.cameras.new("probe")
    cam = bpy.data.objects.new("probe", cam_data)
    scene.collection.objects.link(cam)
    # Blender cameras look down their local -Z: rotate it onto +X or -X.
    cam.rotation_euler = (math.pi / 2, 0.0, -math.pi / 2 if direction == "+X" else math.pi / 2)
    cam_data.angle = math.radians(30)
    scene.camera = cam
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.render.resolution_x = scene.render.resolution_y = 8
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"
    tmp = bpy.app.tempdir + f"probe{direction}.exr"
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = tmp
    bpy.ops.render.render(write_still=True, scene=scene.name)
    img = bpy.data.images.load(tmp)
    px = np.array(img.pixels[:], np.float32).reshape(8, 8, 4)
    bpy.data.objects.remove(cam)
    return px[..., :3].mean((0, 1))


def test_import_world_wires_the_environment(tmp_path):
    from prd_blender import importer

    run = tmp_path / "run ü"
    run.mkdir()
    _write_env(run / "environment.exr")
    (run / "manifest.json").write_text(json.dumps(
        {"format": "prd-output", "version": 1, "status": "complete", "files": {"environment": "environment.exr"}}
    ))
    scene = bpy.data.scenes.new("world probe")  # empty: the default scene's cube would hide the sky
    world = importer.import_world(run, scene, strength=1.0)
    assert scene.world == world
    nodes = world.node_tree.nodes
    env = next(n for n in nodes if n.type == "TEX_ENVIRONMENT")
    bg = next(n for n in nodes if n.type == "BACKGROUND")
    out = next(n for n in nodes if n.type == "OUTPUT_WORLD")
    assert env.image.colorspace_settings.name in ("Linear Rec.709", "Linear")
    assert bg.inputs["Color"].links[0].from_node == env
    assert out.inputs["Surface"].links[0].from_node == bg
    assert env.inputs["Vector"].links[0].from_node.type == "MAPPING"

    towards_x = _render_towards(scene, "+X")
    towards_minus_x = _render_towards(scene, "-X")
    assert towards_x[0] > 0.8 and towards_x[2] < 0.1, towards_x
    assert towards_minus_x[2] > 0.8 and towards_minus_x[0] < 0.1, towards_minus_x


def test_import_world_without_environment_is_a_clear_error(tmp_path):
    from prd_blender import importer

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "prd-output", "version": 1, "files": {}}))
    with pytest.raises(importer.ImportError_, match="environment"):
        importer.import_world(tmp_path, bpy.context.scene)
