"""Render a baked asset (``mesh.glb``) with Cycles under several HDRIs from NeRF-style cameras.

This file is a *script for a Blender Python* (the ``bpy`` module, or ``blender -b --python``); the trainer
never imports it. ``asset.render_cycles`` launches it in a subprocess with a JSON job file::

    python cycles_script.py JOB.json
    blender -b --factory-startup --python-exit-code 1 --python cycles_script.py -- JOB.json

It lives inside the package (not in scripts/) so that ``prd bench mesh`` works from an installed package.
Only the standard library and ``bpy`` are used: the Blender Python may lack numpy/torch.

Job keys: ``glb``, ``transforms`` (camera_angle_x + frames[].transform_matrix = Blender camera.matrix_world),
``frames`` (indices into the transforms' frames), ``lightings`` ([{name, file, strength}]), ``dest``,
``size`` (width), ``height`` (default ``size``), ``samples``, ``seed``. Writes ``dest/<lighting name>/<frame
stem>.exr`` (linear RGBA float32, premultiplied by the film alpha, as Blender stores EXR) and
``dest/render.json`` (timings, Blender version).

The scene matches ``scripts/make_relight_benchmark.py``'s ground truth: Cycles CPU, OpenImageDenoise,
transparent film, Standard view transform, a horizontal-fit camera of the same angle, world = Texture
Coordinate (Generated) -> Mapping (identity) -> Environment Texture (Linear Rec.709) -> Background x strength.
The GLB goes through Blender's own glTF importer, so the material wiring of the asset is what is rendered.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _job_path(argv: list[str]) -> Path:
    # under ``blender --python`` the script's own arguments follow "--"
    args = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: cycles_script.py JOB.json")
    return Path(args[0])


def setup_cycles(scene: Any, size: int, samples: int, seed: int) -> None:
    """The ground truth's render settings: Cycles CPU, OIDN, transparent film, Standard view transform.

    Also used by ``scripts/_bpy_scene.py`` (the benchmark and sample-capture generators), so that the
    baked mesh is rendered exactly like the ground truth it is scored against."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.seed = seed
    scene.cycles.use_denoising = True
    try:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
    except TypeError:  # a build without OIDN: the raw render (noisier, still unbiased)
        scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    # Alpha = object mask; the HDRI lights the object but is not visible behind it.
    scene.render.film_transparent = True
    # Standard view transform: an 8-bit PNG is then the plain sRGB encoding of the linear render, which
    # is what the trainer assumes (AgX/Filmic would bake a tone curve into the "ground truth").
    vs = scene.view_settings
    vs.view_transform, vs.look, vs.exposure, vs.gamma = "Standard", "None", 0.0, 1.0
    scene.display_settings.display_device = "sRGB"


def _setup_scene(bpy: Any, size: int, samples: int, seed: int) -> Any:
    scene = bpy.context.scene
    setup_cycles(scene, size, samples, seed)
    # BVH and images stay in memory between the renders of one job (the GT script measured ~30 % faster)
    scene.render.use_persistent_data = True
    img = scene.render.image_settings
    img.media_type = "IMAGE"  # Blender 5.0: multilayer EXR is a media type; we want a plain RGBA EXR
    img.file_format = "OPEN_EXR"
    img.color_mode = "RGBA"
    img.color_depth = "32"
    img.exr_codec = "ZIP"
    return scene


def _setup_world(bpy: Any) -> tuple[Any, Any]:
    world = bpy.data.worlds.new("PRDBenchWorld")
    bpy.context.scene.world = world
    world.use_nodes = True
    nt = world.node_tree
    nt.nodes.clear()
    coord = nt.nodes.new("ShaderNodeTexCoord")
    mapping = nt.nodes.new("ShaderNodeMapping")
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    bg = nt.nodes.new("ShaderNodeBackground")
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(coord.outputs["Generated"], mapping.inputs["Vector"])
    nt.links.new(mapping.outputs["Vector"], env.inputs["Vector"])
    nt.links.new(env.outputs["Color"], bg.inputs["Color"])
    nt.links.new(bg.outputs["Background"], out.inputs["Surface"])
    return env, bg


def run(job: dict) -> dict:
    # Run as a script, this file's folder is sys.path[0]: its sibling modules (e.g. a future ``cycles.py``)
    # would shadow Blender's own add-ons of the same name, so take it off before importing bpy.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(here)]
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="prd_blender_user_"))
    import bpy  # only here: this file must stay importable (for tests, linting) without Blender
    from mathutils import Matrix

    t0 = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if not hasattr(bpy.ops.import_scene, "gltf"):
        bpy.ops.preferences.addon_enable(module="io_scene_gltf2")
    bpy.ops.import_scene.gltf(filepath=str(job["glb"]))
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    if not meshes:
        raise RuntimeError(f"the glTF importer found no mesh in {job['glb']}")
    scene = _setup_scene(bpy, int(job["size"]), int(job["samples"]), int(job.get("seed", 0)))
    scene.render.resolution_y = int(job.get("height") or job["size"])
    env, bg = _setup_world(bpy)
    tf = json.loads(Path(job["transforms"]).read_text())
    cam_data = bpy.data.cameras.new("PRDBenchCamera")
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.angle = float(tf["camera_angle_x"])
    cam_data.clip_start, cam_data.clip_end = 0.1, 100.0
    cam = bpy.data.objects.new("PRDBenchCamera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    dest = Path(job["dest"])
    times: dict[str, float] = {"import_s": time.perf_counter() - t0}
    for light in job["lightings"]:
        t = time.perf_counter()
        env.image = bpy.data.images.load(str(light["file"]), check_existing=True)
        env.image.colorspace_settings.name = "Linear Rec.709"  # explicit: never let a rule guess sRGB
        bg.inputs["Strength"].default_value = float(light["strength"])
        folder = dest / light["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for i in job["frames"]:
            fr = tf["frames"][i]
            cam.matrix_world = Matrix(fr["transform_matrix"])
            bpy.context.view_layer.update()
            bpy.ops.render.render(write_still=False)
            bpy.data.images["Render Result"].save_render(str(folder / f"{Path(fr['file_path']).name}.exr"),
                                                         scene=scene)
        times[f"{light['name']}_s"] = time.perf_counter() - t
    info = {
        "blender": bpy.app.version_string, "faces": sum(len(o.data.polygons) for o in meshes),
        "materials": sorted({s.material.name for o in meshes for s in o.material_slots if s.material}),
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "total_s": round(time.perf_counter() - t0, 2),
    }
    (dest / "render.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    job = json.loads(_job_path(sys.argv).read_text())
    info = run(job)
    print(json.dumps({"event": "cycles_render", **info}), flush=True)


if __name__ == "__main__":
    main()
