#!/usr/bin/env python3
"""Render the bundled sample capture (``samples/sample_capture``) with Blender Cycles.

The scene is built entirely in code (no .blend files, no downloads) so that the sample is
reproducible from this script and the ``bpy`` wheel alone::

    pip install bpy==5.0.1
    python scripts/make_sample_capture.py --out samples/sample_capture

Output follows the NeRF Synthetic layout: ``transforms_train.json`` / ``transforms_test.json``
(``camera_angle_x`` + per-frame camera-to-world matrices in Blender/OpenGL camera axes, i.e.
exactly ``camera.matrix_world``) and RGBA PNGs in ``train/`` and ``test/`` whose alpha is the
object mask (film transparent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

# Shared with make_relight_benchmark.py; the script's own folder is on sys.path when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bpy_scene import (  # noqa: E402
    GOLDEN_ANGLE,
    Z_MAX,
    Z_MIN,
    add_camera,
    fibonacci_directions,
    import_bpy,
    setup_render,
    strip_png_text,
)
from _bpy_scene import link as _link  # noqa: E402

HDRI_NAME = "courtyard.exr"
HDRI_STRENGTH = 0.5
CAMERA_RADIUS = 4.0
# Fraction of the frame width covered by the object's bounding sphere; the bounding sphere is
# conservative, so the silhouette itself spans ~60-65 % of the frame (measured).
FILL_FRACTION = 0.8


def _glossy_material(bpy: ModuleType) -> Any:
    """Glossy (roughness 0.3) material with a banded multi-colour procedural texture.

    Object-space coordinates pin the pattern to the surface, so it is a fixed albedo map that an
    inverse renderer can learn, while the distorted wave gives enough high-frequency detail to
    make the views informative.
    """
    mat = bpy.data.materials.new("SampleGlossy")
    nt = mat.node_tree  # Blender 5.0 creates node-based materials by default (use_nodes is deprecated)
    bsdf = nt.nodes["Principled BSDF"]
    coord = nt.nodes.new("ShaderNodeTexCoord")
    wave = nt.nodes.new("ShaderNodeTexWave")
    wave.wave_type = "BANDS"
    wave.bands_direction = "Z"
    wave.wave_profile = "SAW"  # uniform Fac distribution, so all four ramp colours get equal area
    wave.inputs["Scale"].default_value = 1.2
    wave.inputs["Distortion"].default_value = 3.0
    wave.inputs["Detail"].default_value = 2.0
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.interpolation = "CONSTANT"
    elems = ramp.color_ramp.elements
    colours = [
        (0.00, (0.80, 0.10, 0.08, 1.0)),  # red
        (0.30, (0.85, 0.60, 0.05, 1.0)),  # amber
        (0.55, (0.05, 0.45, 0.40, 1.0)),  # teal
        (0.80, (0.12, 0.18, 0.70, 1.0)),  # blue
    ]
    elems[0].position, elems[0].color = colours[0]
    elems[1].position, elems[1].color = colours[1]
    for pos, col in colours[2:]:
        e = elems.new(pos)
        e.color = col
    _link(nt, coord.outputs["Object"], wave.inputs["Vector"])
    _link(nt, wave.outputs["Fac"], ramp.inputs["Fac"])
    _link(nt, ramp.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.3
    bsdf.inputs["Metallic"].default_value = 0.0
    return mat


def _diffuse_material(bpy: ModuleType) -> Any:
    """Rough, dielectric checker material: the 'diffuse' part of the sample."""
    mat = bpy.data.materials.new("SampleDiffuse")
    nt = mat.node_tree
    bsdf = nt.nodes["Principled BSDF"]
    coord = nt.nodes.new("ShaderNodeTexCoord")
    checker = nt.nodes.new("ShaderNodeTexChecker")
    checker.inputs["Scale"].default_value = 6.0
    checker.inputs["Color1"].default_value = (0.75, 0.72, 0.65, 1.0)  # warm off-white
    checker.inputs["Color2"].default_value = (0.20, 0.45, 0.10, 1.0)  # green
    _link(nt, coord.outputs["Object"], checker.inputs["Vector"])
    _link(nt, checker.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.9
    return mat


def build_scene(bpy: ModuleType) -> float:
    """Build the sample object centred at the origin (Z up); return its bounding-sphere radius."""
    from mathutils import Vector

    # A Suzanne (glossy, banded texture) resting on a torus pedestal (diffuse, checker).
    bpy.ops.mesh.primitive_monkey_add(size=1.0, location=(0.0, 0.0, 0.12), rotation=(0.25, 0.0, 0.5))
    monkey = bpy.context.active_object
    monkey.name = "Suzanne"
    sub = monkey.modifiers.new("Subdivision", "SUBSURF")
    sub.levels = sub.render_levels = 2
    bpy.ops.object.shade_smooth()
    monkey.data.materials.append(_glossy_material(bpy))

    bpy.ops.mesh.primitive_torus_add(
        major_radius=0.5, minor_radius=0.14, major_segments=64, minor_segments=24, location=(0, 0, -0.42)
    )
    torus = bpy.context.active_object
    torus.name = "Pedestal"
    bpy.ops.object.shade_smooth()
    torus.data.materials.append(_diffuse_material(bpy))

    # Centre the evaluated geometry's bounding box at the origin, so "looking at the origin" means
    # "looking at the object".
    deps = bpy.context.evaluated_depsgraph_get()
    pts = []
    for ob in (monkey, torus):
        ev = ob.evaluated_get(deps)
        pts += [ev.matrix_world @ v.co for v in ev.to_mesh().vertices]
        ev.to_mesh_clear()
    lo = Vector([min(p[i] for p in pts) for i in range(3)])
    hi = Vector([max(p[i] for p in pts) for i in range(3)])
    centre = (lo + hi) / 2
    for ob in (monkey, torus):
        ob.location -= centre
    return max((p - centre).length for p in pts)


def setup_world(bpy: ModuleType, hdri: str, strength: float) -> None:
    """Light the scene with one of Blender's own bundled (CC0, Poly Haven) studio-light HDRIs."""
    path = Path(bpy.utils.system_resource("DATAFILES", path="studiolights/world")) / hdri
    if not path.is_file():
        raise FileNotFoundError(f"bundled HDRI not found: {path}")
    world = bpy.data.worlds.new("SampleWorld")
    bpy.context.scene.world = world
    nt = world.node_tree
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    env.image = bpy.data.images.load(str(path), check_existing=True)
    bg = nt.nodes["Background"]
    _link(nt, env.outputs["Color"], bg.inputs["Color"])
    # The bundled HDRIs are photographed at daylight exposure; scale down so highlights on the
    # glossy part stay below 8-bit clipping (clipped pixels carry no radiometric information).
    bg.inputs["Strength"].default_value = strength


def render_split(
    bpy: ModuleType, cam: Any, out: Path, split: str, dirs: list[tuple[float, float, float]]
) -> dict[str, Any]:
    """Render one image per direction into ``out/split`` and return the NeRF-style transforms dict."""
    from mathutils import Vector

    scene = bpy.context.scene
    (out / split).mkdir(parents=True, exist_ok=True)
    for stale in (out / split).glob("r_*.png"):
        stale.unlink()
    frames = []
    for i, d in enumerate(dirs):
        pos = Vector(d) * CAMERA_RADIUS
        cam.location = pos
        # Camera looks down its local -Z with +Y up: aim -Z at the origin, keep world Z up.
        cam.rotation_euler = (-pos).to_track_quat("-Z", "Y").to_euler()
        bpy.context.view_layer.update()
        name = f"{split}/r_{i:03d}"
        scene.render.filepath = str(out / f"{name}.png")
        bpy.ops.render.render(write_still=True)
        strip_png_text(Path(scene.render.filepath))
        frames.append({"file_path": name, "transform_matrix": [list(row) for row in cam.matrix_world]})
    return {"camera_angle_x": cam.data.angle_x, "frames": frames}


def regeneration_command(args: argparse.Namespace) -> str:
    """The full command line (every option explicit) that reproduces ``args``."""
    return (
        f"python scripts/make_sample_capture.py --out {args.out.as_posix()} --views {args.views} "
        f"--test-views {args.test_views} --size {args.size} --samples {args.samples} --seed {args.seed} "
        f"--hdri {args.hdri} --hdri-strength {args.hdri_strength}"
    )


def write_readme(out: Path, bpy: ModuleType, args: argparse.Namespace) -> None:
    cmd = regeneration_command(args)
    text = f"""# Sample capture

Synthetic multi-view capture bundled with prd_blender for tests, demos and quick starts.
**Generated — do not edit by hand.** Regenerate with (needs `pip install bpy=={bpy.app.version_string}`):

```
{cmd}
```

- Renderer: Blender {bpy.app.version_string} (`bpy` module), Cycles on CPU, {args.samples} samples,
  OpenImageDenoise, seed {args.seed}; view transform *Standard* (PNG = sRGB of the linear render).
- Scene (built in code, see the script): a subdivided Suzanne with a glossy (roughness 0.3) material
  and a banded red/amber/teal/blue procedural texture, resting on a diffuse (roughness 0.9) green /
  off-white checker torus. About unit size, centred at the origin, Z up.
- Lighting: Blender's bundled studio-light HDRI `{args.hdri}` (CC0, Poly Haven), strength
  {args.hdri_strength}, as the World (Environment Texture).
  Film is transparent, so alpha is the object mask and the HDRI is not visible in the images.
- Cameras: {args.views} train / {args.test_views} test views on Fibonacci spirals (different azimuths)
  at radius {CAMERA_RADIUS}, elevation band sin(el) in [{Z_MIN}, {Z_MAX}], all looking at the origin.
- Format: NeRF Synthetic. `transforms_*.json` hold `camera_angle_x` and per-frame `transform_matrix`
  (camera-to-world, Blender/OpenGL camera axes: -Z forward, +Y up, i.e. `camera.matrix_world`).
  Images are {args.size}x{args.size} RGBA PNGs (straight alpha) in `train/` and `test/`.
"""
    (out / "README.md").write_text(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("samples/sample_capture"))
    p.add_argument("--views", type=int, default=48, help="number of training views")
    p.add_argument("--test-views", type=int, default=8, help="number of held-out test views")
    p.add_argument("--size", type=int, default=128, help="image width = height in pixels")
    p.add_argument("--samples", type=int, default=64, help="Cycles samples per pixel")
    p.add_argument("--seed", type=int, default=0, help="Cycles sampling seed")
    p.add_argument("--hdri", default=HDRI_NAME, help="file in Blender's datafiles/studiolights/world")
    p.add_argument("--hdri-strength", type=float, default=HDRI_STRENGTH, help="World background strength")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t0 = time.perf_counter()
    bpy = import_bpy()
    user_dir = os.environ["BLENDER_USER_RESOURCES"]
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        radius = build_scene(bpy)
        setup_world(bpy, args.hdri, args.hdri_strength)
        setup_render(bpy, args.size, args.samples, args.seed)

        # Fixed FOV so that the bounding sphere spans FILL_FRACTION of the frame from CAMERA_RADIUS.
        cam = add_camera(bpy, "SampleCamera", radius, CAMERA_RADIUS, FILL_FRACTION)

        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        splits = {
            "train": fibonacci_directions(args.views),
            # Offset by half a golden angle so that test views never coincide with training views.
            "test": fibonacci_directions(args.test_views, azimuth_offset=0.5 * GOLDEN_ANGLE),
        }
        for split, dirs in splits.items():
            meta = render_split(bpy, cam, out, split, dirs)
            (out / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_readme(out, bpy, args)
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)
    print(f"wrote {out} ({args.views}+{args.test_views} views) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
