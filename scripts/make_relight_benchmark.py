#!/usr/bin/env python3
"""Render the synthetic ground-truth relighting benchmark with Blender Cycles.

Four objects with known materials (built in code: no .blend files, no downloads), each lit by one
HDRI, rendered from many views (``translucent`` is ``diffuse`` with subsurface scattering, light transport
the trainer's shading model cannot represent); for the test views also the material passes (albedo, roughness,
metallic from AOV outputs, world-space normal, mask) and the same views under other HDRIs::

    python scripts/make_relight_benchmark.py            # -> ~/.cache/prd_blender/relight_bench

Layout per object ``OUT/<object>/``: ``transforms_{train,test}.json`` (NeRF Synthetic: camera_angle_x,
frames with file_path without extension and transform_matrix = Blender ``camera.matrix_world``),
RGBA PNGs ``train/r_XXX.png`` and ``test/r_XXX.png``, ``test/r_XXX.exr`` (linear, one EXR part per
pass: Combined = linear RGBA, Normal, albedo, roughness, metallic), ``test_relight/<hdri stem>/r_XXX.png``
and ``.exr`` (linear RGBA), ``mesh.ply`` (ground-truth triangle mesh, world space) and ``meta.json``.
``prd_blender.trainer.bench.relight_data`` reads it without bpy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

# Shared helpers; the script's own folder is on sys.path when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bpy_scene import (  # noqa: E402
    GOLDEN_ANGLE,
    add_camera,
    aim_camera,
    fibonacci_directions,
    import_bpy,
    link,
    set_png_output,
    setup_render,
    strip_png_text,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HDRI_DIR = REPO.parent / "shared" / "data" / "hdri"
DEFAULT_OUT = Path("~/.cache/prd_blender/relight_bench").expanduser()
OBJECTS = ("diffuse", "glossy", "mixed", "translucent")
CAMERA_RADIUS = 4.0
# Bounding-sphere fraction of the frame width, per object: the silhouettes then span ~61-66 % of the
# frame (measured over test views); Suzanne's ears make its bounding sphere loose, hence the larger value.
FILL_FRACTION = {"diffuse": 0.9, "glossy": 0.75, "mixed": 0.75}
FILL_FRACTION["translucent"] = FILL_FRACTION["diffuse"]  # the same Suzanne, so the same cameras
# Exposure trim per HDRI on top of the mean-luminance rule (see hdri_strength), measured on the three
# objects: the sun HDRIs otherwise clip the sunlit diffuse surfaces (quarry: 4 % of object pixels at
# trim 1) and large parts of the copper object (spruit: 13 %). Specular sun glints still clip; the
# linear EXRs keep them.
EXPOSURE_TRIM = {"quarry_01_1k": 0.75, "spruit_sunrise_1k": 0.8}
AOVS = (("albedo", "COLOR"), ("roughness", "VALUE"), ("metallic", "VALUE"))
# Constant material values, also checked by the tests against the AOV passes.
DIFFUSE_ROUGHNESS = 0.9
GLOSSY_ROUGHNESS = 0.15
GLOSSY_ALBEDO = (0.955, 0.638, 0.538)  # copper F0 (linear), as in the glTF/Filament tables
MIXED_ROUGHNESS_LEVELS = (0.1, 0.3, 0.5, 0.7)
# Subsurface mean free path per channel (radius x scale, in scene units; the object's bounding-box diagonal
# is 2): red light travels 0.2, enough to glow through Suzanne's ears when they are backlit (seen under
# quarry's sun) and to soften the shading of the whole head; blue 0.02 keeps the texture's detail partly visible.
TRANSLUCENT_RADIUS = (1.0, 0.35, 0.1)
TRANSLUCENT_SCALE = 0.2


# --------------------------------------------------------------------------------------------------
# Materials: Principled BSDF whose Base Color / Roughness / Metallic come from texture nodes; the
# very same sockets feed AOV Outputs, so the passes equal the material inputs exactly.


def _new_material(bpy: ModuleType, name: str) -> tuple[Any, Any, Any]:
    mat = bpy.data.materials.new(name)
    nt = mat.node_tree  # Blender 5.0 creates node-based materials by default
    return mat, nt, nt.nodes["Principled BSDF"]


def _drive(nt: Any, bsdf: Any, albedo: Any, roughness: Any, metallic: Any) -> None:
    """Link the three material sockets to the BSDF and to the AOV outputs of the same names."""
    for name, sock, bsdf_input in (
        ("albedo", albedo, "Base Color"),
        ("roughness", roughness, "Roughness"),
        ("metallic", metallic, "Metallic"),
    ):
        link(nt, sock, bsdf.inputs[bsdf_input])
        aov = nt.nodes.new("ShaderNodeOutputAOV")
        aov.aov_name = name
        link(nt, sock, aov.inputs["Color" if name == "albedo" else "Value"])


def _value(nt: Any, v: float) -> Any:
    node = nt.nodes.new("ShaderNodeValue")
    node.outputs[0].default_value = v
    return node.outputs[0]


def _rgb(nt: Any, c: tuple[float, float, float]) -> Any:
    node = nt.nodes.new("ShaderNodeRGB")
    node.outputs[0].default_value = (*c, 1.0)
    return node.outputs[0]


def _ramp(nt: Any, fac: Any, stops: list[tuple[float, tuple[float, ...]]], constant: bool = False) -> Any:
    node = nt.nodes.new("ShaderNodeValToRGB")
    node.color_ramp.interpolation = "CONSTANT" if constant else "LINEAR"
    elems = node.color_ramp.elements
    for i, (pos, col) in enumerate(stops):
        e = elems[i] if i < 2 else elems.new(pos)
        e.position = pos
        e.color = col if len(col) == 4 else (*col, 1.0)
    link(nt, fac, node.inputs["Fac"])
    return node


def _mix(nt: Any, blend: str, fac: Any, a: Any, b: Any) -> Any:
    node = nt.nodes.new("ShaderNodeMix")
    node.data_type = "RGBA"
    node.blend_type = blend
    node.clamp_result = True
    if isinstance(fac, float):
        node.inputs["Factor"].default_value = fac
    else:
        link(nt, fac, node.inputs["Factor"])
    link(nt, a, node.inputs[6])  # A (colour); the float/vector variants share the name
    link(nt, b, node.inputs[7])  # B (colour)
    return node.outputs[2]  # Result (colour)


def _detailed_albedo(nt: Any) -> Any:
    """The diffuse object's albedo: noise-driven palette x checker x voronoi cracks."""
    coord = nt.nodes.new("ShaderNodeTexCoord").outputs["Object"]
    noise = nt.nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 3.0
    noise.inputs["Detail"].default_value = 6.0
    noise.inputs["Distortion"].default_value = 0.6
    link(nt, coord, noise.inputs["Vector"])
    palette = _ramp(
        nt,
        noise.outputs["Fac"],
        [
            (0.35, (0.70, 0.12, 0.08)),  # brick red
            (0.45, (0.80, 0.62, 0.10)),  # ochre
            (0.52, (0.10, 0.45, 0.18)),  # green
            (0.60, (0.08, 0.20, 0.65)),  # blue
            (0.68, (0.75, 0.72, 0.66)),  # off-white
        ],
    )
    checker = nt.nodes.new("ShaderNodeTexChecker")  # fine detail: ~2-3 px per square at 128 px
    checker.inputs["Scale"].default_value = 14.0
    checker.inputs["Color1"].default_value = (1.0, 1.0, 1.0, 1.0)
    checker.inputs["Color2"].default_value = (0.6, 0.6, 0.6, 1.0)
    link(nt, coord, checker.inputs["Vector"])
    voronoi = nt.nodes.new("ShaderNodeTexVoronoi")  # dark cell borders ("cracks")
    voronoi.feature = "DISTANCE_TO_EDGE"
    voronoi.inputs["Scale"].default_value = 5.0
    link(nt, coord, voronoi.inputs["Vector"])
    cracks = _ramp(nt, voronoi.outputs["Distance"], [(0.0, (0.15, 0.15, 0.15)), (0.06, (1.0, 1.0, 1.0))])
    albedo = _mix(nt, "MULTIPLY", 1.0, palette.outputs["Color"], checker.outputs["Color"])
    return _mix(nt, "MULTIPLY", 1.0, albedo, cracks.outputs["Color"])


DETAILED_ALBEDO = (
    "object-space noise -> 5-colour ramp (red/ochre/green/blue/off-white), x checker 1.0/0.6 "
    "(scale 14), x dark voronoi cell borders; linear values 0.01-0.8"
)


def _diffuse_like(bpy: ModuleType, name: str) -> tuple[Any, Any, dict]:
    """The rough dielectric with the detailed albedo; ``diffuse`` and ``translucent`` both start from it."""
    mat, nt, bsdf = _new_material(bpy, name)
    _drive(nt, bsdf, _detailed_albedo(nt), _value(nt, DIFFUSE_ROUGHNESS), _value(nt, 0.0))
    desc = {"albedo": DETAILED_ALBEDO, "roughness": DIFFUSE_ROUGHNESS, "metallic": 0.0, "specular_ior_level": 0.5}
    return mat, bsdf, desc


def diffuse_material(bpy: ModuleType) -> tuple[Any, dict]:
    """Rough dielectric with a detailed multi-colour albedo."""
    mat, _, desc = _diffuse_like(bpy, "BenchDiffuse")
    return mat, desc


def translucent_material(bpy: ModuleType) -> tuple[Any, dict]:
    """The diffuse object's material with subsurface scattering: light the shading model cannot represent.

    Same albedo, roughness and metallic as ``diffuse`` (and the same geometry), so the two objects differ
    only in the light transport: light enters the surface, scatters under it (random walk) and leaves
    elsewhere, softening the shading, bleeding into shadows and glowing through the thin ears. The
    distillation progress exists for pixels like these; the AOVs still give the surface's Base Color.
    """
    mat, bsdf, desc = _diffuse_like(bpy, "BenchTranslucent")
    bsdf.subsurface_method = "RANDOM_WALK"
    bsdf.inputs["Subsurface Weight"].default_value = 1.0
    bsdf.inputs["Subsurface Radius"].default_value = TRANSLUCENT_RADIUS
    bsdf.inputs["Subsurface Scale"].default_value = TRANSLUCENT_SCALE
    desc["subsurface"] = {"method": "RANDOM_WALK", "weight": 1.0, "radius": list(TRANSLUCENT_RADIUS),
                          "scale": TRANSLUCENT_SCALE}
    return mat, desc


def glossy_material(bpy: ModuleType) -> tuple[Any, dict]:
    """Polished copper: metallic 1, constant roughness and tint."""
    mat, nt, bsdf = _new_material(bpy, "BenchGlossy")
    _drive(nt, bsdf, _rgb(nt, GLOSSY_ALBEDO), _value(nt, GLOSSY_ROUGHNESS), _value(nt, 1.0))
    desc = {"albedo": list(GLOSSY_ALBEDO), "roughness": GLOSSY_ROUGHNESS, "metallic": 1.0}
    return mat, desc


def mixed_material(bpy: ModuleType) -> tuple[Any, dict]:
    """Metal/dielectric checker, banded roughness 0.1-0.7, multi-colour dielectric albedo."""
    mat, nt, bsdf = _new_material(bpy, "BenchMixed")
    coord = nt.nodes.new("ShaderNodeTexCoord").outputs["Object"]
    checker = nt.nodes.new("ShaderNodeTexChecker")  # metallic: 1 on the "white" squares, 0 elsewhere
    checker.inputs["Scale"].default_value = 2.5
    checker.inputs["Color1"].default_value = (1.0, 1.0, 1.0, 1.0)
    checker.inputs["Color2"].default_value = (0.0, 0.0, 0.0, 1.0)
    link(nt, coord, checker.inputs["Vector"])
    metallic = checker.outputs["Fac"]
    wave = nt.nodes.new("ShaderNodeTexWave")  # roughness: four bands around Z, slightly wavy
    wave.wave_type = "BANDS"
    wave.bands_direction = "Z"
    wave.wave_profile = "SAW"
    wave.inputs["Scale"].default_value = 0.8
    wave.inputs["Distortion"].default_value = 1.0
    link(nt, coord, wave.inputs["Vector"])
    levels = MIXED_ROUGHNESS_LEVELS
    rough_ramp = _ramp(nt, wave.outputs["Fac"], [(i / len(levels), (v, v, v)) for i, v in enumerate(levels)], True)
    to_bw = nt.nodes.new("ShaderNodeRGBToBW")  # grey ramp colour -> float exactly (r = g = b)
    link(nt, rough_ramp.outputs["Color"], to_bw.inputs["Color"])
    roughness = to_bw.outputs["Val"]
    voronoi = nt.nodes.new("ShaderNodeTexVoronoi")  # dielectric albedo: cells, each one of four colours
    voronoi.inputs["Scale"].default_value = 4.0
    link(nt, coord, voronoi.inputs["Vector"])
    cell = nt.nodes.new("ShaderNodeRGBToBW")  # random per-cell colour -> random per-cell value
    link(nt, voronoi.outputs["Color"], cell.inputs["Color"])
    palette = [(0.65, 0.10, 0.10), (0.10, 0.35, 0.65), (0.80, 0.78, 0.72), (0.15, 0.50, 0.15)]
    diel = _ramp(nt, cell.outputs["Val"], [(0.35 + 0.1 * i, c) for i, c in enumerate(palette)], True)
    metal_col = _rgb(nt, (0.91, 0.78, 0.42))  # brass-like F0
    albedo = _mix(nt, "MIX", metallic, diel.outputs["Color"], metal_col)
    _drive(nt, bsdf, albedo, roughness, metallic)
    desc = {
        "albedo": "dielectric squares: object-space voronoi cells, each red/blue/cream/green; metal squares: "
        "brass (0.91, 0.78, 0.42)",
        "roughness": f"4 wavy horizontal bands, values {list(levels)}",
        "metallic": "3D checker (scale 2.5) of 1 (metal) and 0 (dielectric)",
    }
    return mat, desc


# --------------------------------------------------------------------------------------------------
# Geometry


def _smooth_object(bpy: ModuleType, name: str, bm: Any, subsurf: int = 0) -> Any:
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    for poly in mesh.polygons:
        poly.use_smooth = True
    ob = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(ob)
    if subsurf:
        mod = ob.modifiers.new("Subdivision", "SUBSURF")
        mod.levels = mod.render_levels = subsurf
    return ob


def build_diffuse(bpy: ModuleType) -> list[Any]:
    """Subdivided Suzanne: concave eyes/ears, folds and flat-ish areas for the detailed texture."""
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_monkey(bm)
    ob = _smooth_object(bpy, "Diffuse", bm, subsurf=2)
    ob.rotation_euler = (0.3, 0.0, 0.6)  # face tilted up towards the mostly-upper cameras
    return [ob]


def build_glossy(bpy: ModuleType) -> list[Any]:
    """A sphere with a tilted torus around it: convex, saddle and concave-corner curvature."""
    import bmesh
    from mathutils import Matrix

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=64, v_segments=32, radius=0.55)
    ring = bmesh.new()
    # bmesh has no torus primitive: sweep a circle of minor radius around Z.
    major, minor, nu, nv = 0.62, 0.17, 96, 32
    verts = [
        [
            ring.verts.new(
                (
                    (major + minor * math.cos(b)) * math.cos(a),
                    (major + minor * math.cos(b)) * math.sin(a),
                    minor * math.sin(b),
                )
            )
            for b in (2 * math.pi * j / nv for j in range(nv))
        ]
        for a in (2 * math.pi * i / nu for i in range(nu))
    ]
    for i in range(nu):
        for j in range(nv):
            i2, j2 = (i + 1) % nu, (j + 1) % nv
            ring.faces.new((verts[i][j], verts[i2][j], verts[i2][j2], verts[i][j2]))
    bmesh.ops.transform(ring, matrix=Matrix.Rotation(0.5, 4, "X") @ Matrix.Rotation(0.3, 4, "Y"), verts=ring.verts)
    tmp = bpy.data.meshes.new("tmp_ring")
    ring.to_mesh(tmp)
    ring.free()
    bm.from_mesh(tmp)  # the two shells intersect: fine for rendering (no boolean needed)
    bpy.data.meshes.remove(tmp)
    return [_smooth_object(bpy, "Glossy", bm, subsurf=1)]


def build_mixed(bpy: ModuleType) -> list[Any]:
    """A thick bowl with a ball resting inside: concave, so light inter-reflects (incl. metal on metal)."""
    import bmesh

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=64, v_segments=32, radius=0.8)
    bmesh.ops.delete(bm, geom=[v for v in bm.verts if v.co.z > 0.2], context="VERTS")  # open the top
    bm.verts.ensure_lookup_table()
    bowl = _smooth_object(bpy, "Bowl", bm)
    solid = bowl.modifiers.new("Solidify", "SOLIDIFY")
    solid.thickness = 0.08
    solid.offset = -1.0  # thicken inwards: the outer surface stays the sphere
    solid.use_rim = True
    sub = bowl.modifiers.new("Subdivision", "SUBSURF")
    sub.levels = sub.render_levels = 1
    bowl.rotation_euler = (0.35, 0.0, 0.0)  # tilted: the inside faces part of the cameras

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=0.4)
    ball = _smooth_object(bpy, "Ball", bm)
    # Resting in the tilted bowl's lowest point: inner radius 0.72, minus the ball radius, along the
    # rotated -Z axis (0, sin 0.35, -cos 0.35).
    ball.location = (0.0, 0.32 * math.sin(0.35), -0.32 * math.cos(0.35))
    return [bowl, ball]


BUILDERS = {
    "diffuse": (build_diffuse, diffuse_material),
    "glossy": (build_glossy, glossy_material),
    "mixed": (build_mixed, mixed_material),
    "translucent": (build_diffuse, translucent_material),
}


def build_object(bpy: ModuleType, kind: str) -> tuple[list[Any], dict, float]:
    """Build one benchmark object centred at the origin; return its objects, material description, radius."""
    from mathutils import Vector

    build, make_material = BUILDERS[kind]
    obs = build(bpy)
    mat, desc = make_material(bpy)
    for ob in obs:
        ob.data.materials.append(mat)
    bpy.context.view_layer.update()
    pts = [ob.matrix_world @ v.co for ob, me in _evaluated_meshes(bpy, obs) for v in me.vertices]
    lo = Vector([min(p[i] for p in pts) for i in range(3)])
    hi = Vector([max(p[i] for p in pts) for i in range(3)])
    centre = (lo + hi) / 2
    # Scale to a bounding-box diagonal of ~2 (about unit size) and centre at the origin.
    scale = 2.0 / (hi - lo).length
    for ob in obs:
        ob.location = (ob.location - centre) * scale
        ob.scale = ob.scale * scale
    bpy.context.view_layer.update()
    radius = max(
        (ob.matrix_world @ v.co).length for ob, me in _evaluated_meshes(bpy, obs) for v in me.vertices
    )
    return obs, desc, radius


def _evaluated_meshes(bpy: ModuleType, obs: list[Any]) -> list[tuple[Any, Any]]:
    deps = bpy.context.evaluated_depsgraph_get()
    return [(ob, ob.evaluated_get(deps).data) for ob in obs]


def write_ply(bpy: ModuleType, obs: list[Any], path: Path) -> tuple[int, int]:
    """Binary little-endian PLY of the evaluated (modifiers applied), triangulated, world-space mesh."""
    verts, normals, tris, base = [], [], [], 0
    for ob, me in _evaluated_meshes(bpy, obs):
        mw = np.array(ob.matrix_world, dtype=np.float64)
        co = np.empty(len(me.vertices) * 3, dtype=np.float32)
        me.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3).astype(np.float64)
        nrm = np.empty(len(me.vertices) * 3, dtype=np.float32)
        me.vertex_normals.foreach_get("vector", nrm)
        nrm = nrm.reshape(-1, 3).astype(np.float64) @ np.linalg.inv(mw[:3, :3])  # inverse-transpose
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        me.calc_loop_triangles()
        t = np.empty(len(me.loop_triangles) * 3, dtype=np.int32)
        me.loop_triangles.foreach_get("vertices", t)
        verts.append(co @ mw[:3, :3].T + mw[:3, 3])
        normals.append(nrm)
        tris.append(t.reshape(-1, 3) + base)
        base += len(co)
    v = np.concatenate(verts).astype("<f4")
    n = np.concatenate(normals).astype("<f4")
    f = np.concatenate(tris).astype("<i4")
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment prd_blender relight benchmark ground truth (world space)\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vert_rec = np.concatenate([v, n], axis=1).tobytes()
    face_rec = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", 3)])
    face_rec["n"], face_rec["i"] = 3, f
    path.write_bytes(header.encode() + vert_rec + face_rec.tobytes())
    return len(v), len(f)


# --------------------------------------------------------------------------------------------------
# World, passes and rendering


def hdri_strength(bpy: ModuleType, image: Any, target: float) -> float:
    """Background strength that brings the HDRI's mean (solid-angle weighted) luminance to ``target``.

    The five HDRIs differ up to 4x in mean radiance; normalising keeps every lighting well exposed in
    the 8-bit PNGs (relighting is scored after a per-channel scale fit, so the scale is free anyway).
    A measured per-HDRI trim (EXPOSURE_TRIM) limits clipping under the sun HDRIs.
    """
    w, h = image.size
    px = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(px)
    lum = px.reshape(h, w, 4)[..., :3] @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    wts = np.sin(np.pi * (np.arange(h) + 0.5) / h)[:, None]  # equirectangular rows: solid angle ~ sin(theta)
    mean = float((lum * wts).sum() / (wts.sum() * w))
    return target / mean * EXPOSURE_TRIM.get(Path(image.filepath).stem, 1.0)


def setup_world(bpy: ModuleType) -> tuple[Any, Any]:
    """World = Texture Coordinate -> Mapping -> Environment Texture -> Background (DESIGN.md §4)."""
    world = bpy.data.worlds.new("BenchWorld")
    bpy.context.scene.world = world
    nt = world.node_tree
    coord = nt.nodes.new("ShaderNodeTexCoord")
    mapping = nt.nodes.new("ShaderNodeMapping")
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    bg = nt.nodes["Background"]
    link(nt, coord.outputs["Generated"], mapping.inputs["Vector"])
    link(nt, mapping.outputs["Vector"], env.inputs["Vector"])
    link(nt, env.outputs["Color"], bg.inputs["Color"])
    return env, bg


def load_hdri(bpy: ModuleType, path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"HDRI not found: {path}")
    img = bpy.data.images.load(str(path), check_existing=True)
    img.colorspace_settings.name = "Linear Rec.709"  # explicit: .hdr is linear, never let a rule guess sRGB
    return img


def setup_passes(bpy: ModuleType) -> None:
    vl = bpy.context.view_layer
    vl.use_pass_normal = True  # world-space shading normal
    for name, kind in AOVS:
        aov = vl.aovs.add()
        aov.name, aov.type = name, kind


def save_exr(bpy: ModuleType, path: Path, multilayer: bool) -> None:
    """Save the last render as linear EXR: every pass (one part each) or just the RGBA colour."""
    scene = bpy.context.scene
    img = scene.render.image_settings
    # Blender 5.0: multilayer EXR is chosen with media_type (file_format "OPEN_EXR_MULTILAYER" is gone).
    img.media_type = "MULTI_LAYER_IMAGE" if multilayer else "IMAGE"
    img.file_format = "OPEN_EXR_MULTILAYER" if multilayer else "OPEN_EXR"
    img.color_mode = "RGBA"
    img.color_depth = "32" if multilayer else "16"  # passes in float32 so AOVs equal the material exactly
    img.exr_codec = "ZIP"
    bpy.data.images["Render Result"].save_render(str(path), scene=scene)
    set_png_output(scene)


def render_views(
    bpy: ModuleType,
    cam: Any,
    out: Path,
    subdir: str,
    dirs: list[tuple[float, float, float]],
    exr: str | None,
) -> dict[str, Any]:
    """Render one image per direction into ``out/subdir``; return the NeRF-style transforms dict.

    ``exr``: None (PNG only), "passes" (multilayer EXR of every pass) or "rgba" (linear colour EXR).
    """
    scene = bpy.context.scene
    folder = out / subdir
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    frames = []
    split = subdir.split("/")[0]
    for i, d in enumerate(dirs):
        aim_camera(bpy, cam, [c * CAMERA_RADIUS for c in d])
        bpy.ops.render.render(write_still=False)
        png = folder / f"r_{i:03d}.png"
        bpy.data.images["Render Result"].save_render(str(png), scene=scene)
        strip_png_text(png)
        if exr is not None:
            save_exr(bpy, folder / f"r_{i:03d}.exr", multilayer=exr == "passes")
        frames.append({"file_path": f"{split}/r_{i:03d}", "transform_matrix": [list(r) for r in cam.matrix_world]})
    return {"camera_angle_x": cam.data.angle_x, "frames": frames}


def render_object(bpy: ModuleType, kind: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    setup_render(bpy, args.size, args.samples, args.seed)
    # Keep the scene (BVH, images) in memory between the many renders of one object: measured 2.2-2.3
    # instead of 3.2-4.0 s per 128-px, 64-spp view of the mixed object.
    scene.render.use_persistent_data = True
    setup_passes(bpy)
    obs, desc, radius = build_object(bpy, kind)
    env, bg = setup_world(bpy)
    cam = add_camera(bpy, "BenchCamera", radius, CAMERA_RADIUS, FILL_FRACTION[kind])

    out.mkdir(parents=True, exist_ok=True)
    n_verts, n_tris = write_ply(bpy, obs, out / "mesh.ply")
    train_dirs = fibonacci_directions(args.train)
    # Offset by half a golden angle so that test views never coincide with training views.
    test_dirs = fibonacci_directions(args.test, azimuth_offset=0.5 * GOLDEN_ANGLE)

    hdri_dir: Path = args.hdri_dir
    env.image = load_hdri(bpy, hdri_dir / args.hdri)
    strength = hdri_strength(bpy, env.image, args.target_mean)
    bg.inputs["Strength"].default_value = strength
    times = {}
    t = time.perf_counter()
    meta_train = render_views(bpy, cam, out, "train", train_dirs, None)
    times["train"] = time.perf_counter() - t
    t = time.perf_counter()
    meta_test = render_views(bpy, cam, out, "test", test_dirs, "passes")
    times["test"] = time.perf_counter() - t
    (out / "transforms_train.json").write_text(json.dumps(meta_train, indent=2) + "\n")
    (out / "transforms_test.json").write_text(json.dumps(meta_test, indent=2) + "\n")

    relight = []
    if (out / "test_relight").exists():
        shutil.rmtree(out / "test_relight")
    for name in args.relight_hdris:
        env.image = load_hdri(bpy, hdri_dir / name)
        s = hdri_strength(bpy, env.image, args.target_mean)
        bg.inputs["Strength"].default_value = s
        t = time.perf_counter()
        render_views(bpy, cam, out, f"test_relight/{Path(name).stem}", test_dirs, "rgba")
        times[f"relight/{Path(name).stem}"] = time.perf_counter() - t
        relight.append({"name": Path(name).stem, "file": name, "strength": s})

    meta = {
        "object": kind,
        "command": " ".join(["python", *sys.argv]),
        "hdri": {"name": Path(args.hdri).stem, "file": args.hdri, "strength": strength},
        "relight_hdris": relight,
        "hdri_strength_rule": f"{args.target_mean} / solid-angle-weighted mean HDRI luminance x trim {EXPOSURE_TRIM}",
        "world_mapping": "Blender default (Generated coordinates, identity Mapping), HDRI colour space Linear Rec.709",
        "material": desc,
        "mesh": {"file": "mesh.ply", "vertices": n_verts, "triangles": n_tris, "bounding_radius": radius},
        "cameras": {
            "radius": CAMERA_RADIUS,
            "camera_angle_x": cam.data.angle_x,
            "train": args.train,
            "test": args.test,
            "z_band": "sin(elevation) in [-0.35, 0.95]",
        },
        "render": {
            "engine": "CYCLES (CPU)",
            "size": args.size,
            "samples": args.samples,
            "seed": args.seed,
            "denoiser": scene.cycles.denoiser if scene.cycles.use_denoising else None,
            "view_transform": "Standard",
            "film_transparent": True,
        },
        "passes": {
            "file": "test/r_XXX.exr, multi-part EXR, float32, one part per pass",
            "parts": {
                "ViewLayer.Combined": "linear RGBA (denoised colour; A = mask), premultiplied",
                "ViewLayer.Noisy Image": "linear RGBA before denoising",
                "ViewLayer.Normal": "world-space shading normal XYZ",
                "ViewLayer.albedo": "AOV = Principled Base Color (linear)",
                "ViewLayer.roughness": "AOV = Principled Roughness",
                "ViewLayer.metallic": "AOV = Principled Metallic",
            },
            "note": "passes are not denoised and are pixel-filter weighted by coverage (divide by A at edges)",
        },
        "relight_files": "test_relight/<hdri stem>/r_XXX.png (sRGB) and .exr (linear RGBA half)",
        "blender": bpy.app.version_string,
        "render_seconds": {k: round(v, 2) for k, v in times.items()},
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--objects", default=",".join(OBJECTS), help=f"comma-separated subset of {','.join(OBJECTS)}")
    p.add_argument("--size", type=int, default=128, help="image width = height in pixels")
    p.add_argument("--train", type=int, default=100, help="training views per object")
    p.add_argument("--test", type=int, default=20, help="test views per object")
    # Measured at 128 px (sRGB object pixels vs a 512-spp render, OIDN on): 16 spp 37-39 dB, 32 spp 39-41 dB,
    # 64 spp 41-43 dB; 64 spp costs ~1.2-2.8 s per view on 2 shared cores, so 480 renders fit in ~20 min.
    p.add_argument("--samples", type=int, default=64, help="Cycles samples per pixel")
    p.add_argument("--seed", type=int, default=0, help="Cycles sampling seed")
    p.add_argument("--hdri", default="pedestrian_overpass_1k.hdr", help="training lighting (file in --hdri-dir)")
    p.add_argument("--relight-hdris", default="quarry_01_1k.hdr,spruit_sunrise_1k.hdr", help="comma-separated")
    p.add_argument("--hdri-dir", type=Path, default=DEFAULT_HDRI_DIR)
    p.add_argument("--target-mean", type=float, default=0.6, help="HDRI mean luminance after strength scaling")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: 8 train, 2 test, 32 px, 4 samples")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.test, args.size, args.samples = 8, 2, 32, 4
    args.objects = [o for o in args.objects.split(",") if o]
    unknown = set(args.objects) - set(OBJECTS)
    if unknown:
        p.error(f"unknown objects {sorted(unknown)}; choose from {OBJECTS}")
    args.relight_hdris = [h for h in args.relight_hdris.split(",") if h]
    args.out = args.out.expanduser()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    for name in [args.hdri, *args.relight_hdris]:  # fail before any rendering
        if not (args.hdri_dir / name).is_file():
            raise SystemExit(f"HDRI not found: {args.hdri_dir / name}")
    bpy = import_bpy()
    user_dir = os.environ["BLENDER_USER_RESOURCES"]
    try:
        for kind in args.objects:
            meta = render_object(bpy, kind, args, args.out / kind)
            print(f"{kind}: {meta['render_seconds']} total {meta['total_seconds']} s", flush=True)
    finally:
        shutil.rmtree(user_dir, ignore_errors=True)
    print(f"wrote {args.out} ({', '.join(args.objects)}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
