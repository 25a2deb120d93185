"""Render the baked asset (``mesh.glb`` from ``prd mesh``) with Cycles under an HDRI from the cameras of a
NeRF-style transforms file, to compare with ``prd relight`` (Gaussian I_phy) or the benchmark's Cycles GT.

    python scripts/render_baked_mesh.py RUN_DIR --hdri quarry_01_1k.hdr \
        --transforms ~/.cache/prd_blender/relight_bench/diffuse/transforms_test.json --dest out/ [--views 4]

Needs the ``bpy`` module (Blender as a Python module). The GLB goes through Blender's own glTF importer, so
this also checks that the asset works in Blender: material wiring, sRGB / Non-Color textures, tangent space.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bpy_scene import import_bpy, link, setup_render  # noqa: E402


def render_baked_mesh(run: Path, hdri: Path, transforms: Path, dest: Path, views: int = 0, size: int = 128,
                      samples: int = 64, strength: float = 1.0) -> list[Path]:
    """Import ``run/mesh.glb``, light it with ``hdri`` (Blender world convention), render each camera."""
    bpy = import_bpy()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.preferences.addon_enable(module="io_scene_gltf2")
    bpy.ops.import_scene.gltf(filepath=str(run / "mesh.glb"))
    scene = bpy.context.scene
    setup_render(bpy, size, samples, 0)
    world = bpy.data.worlds.new("hdri")
    scene.world = world
    world.use_nodes = True
    nt = world.node_tree
    nt.nodes.clear()
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    env.image = bpy.data.images.load(str(hdri))
    env.image.colorspace_settings.name = "Linear Rec.709"
    bg = nt.nodes.new("ShaderNodeBackground")
    bg.inputs["Strength"].default_value = strength
    out = nt.nodes.new("ShaderNodeOutputWorld")
    link(nt, env.outputs["Color"], bg.inputs["Color"])
    link(nt, bg.outputs["Background"], out.inputs["Surface"])
    tf = json.loads(transforms.read_text())
    frames = tf["frames"][:views] if views else tf["frames"]
    cam_data = bpy.data.cameras.new("cam")
    cam_data.angle_x = float(tf["camera_angle_x"])
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    from mathutils import Matrix

    for fr in frames:
        cam.matrix_world = Matrix(fr["transform_matrix"])
        path = dest / f"{Path(fr['file_path']).name}.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--hdri", type=Path, required=True)
    p.add_argument("--transforms", type=Path, required=True)
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--views", type=int, default=0, help="first N cameras only (0: all)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--strength", type=float, default=1.0)
    a = p.parse_args()
    paths = render_baked_mesh(a.run, a.hdri, a.transforms.expanduser(), a.dest, a.views, a.size, a.samples,
                              a.strength)
    print(json.dumps({"rendered": len(paths), "folder": str(a.dest)}))


if __name__ == "__main__":
    main()
