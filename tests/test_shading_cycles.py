"""Orientation of our equirect convention against Blender: a Cycles mirror sphere under an HDRI with
coloured blobs in known directions must match our own mirror render of the same map.

Cycles runs in a subprocess (headless bpy), so Blender's libraries never share a process with torch."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from prd_blender.trainer.shading.envmap import EnvironmentLight, equirect_dirs
from prd_blender.trainer.shading.hdr_io import read_exr, write_exr
from prd_blender.trainer.shading.shade import reflect

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy not installed")

RES = 48
ORTHO = 2.2  # orthographic camera width in world units; the unit sphere fills most of the frame

# Distinct colours in the six axis directions (and one off-axis blob to catch mirror images).
BLOBS = [
    ((1, 0, 0), (4.0, 0.2, 0.2)),
    ((-1, 0, 0), (3.0, 3.0, 0.2)),
    ((0, 1, 0), (0.2, 4.0, 0.2)),
    ((0, -1, 0), (3.0, 0.2, 3.0)),
    ((0, 0, 1), (0.2, 0.2, 4.0)),
    ((0, 0, -1), (0.2, 3.0, 3.0)),
    ((0.6, -0.6, 0.53), (4.0, 2.0, 0.5)),
]

SCRIPT = textwrap.dedent("""
    import json, math, sys
    import bpy
    env, out, res, ortho = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.render.resolution_x = scene.render.resolution_y = res
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.image_settings.color_depth = "32"
    scene.render.filepath = out

    world = bpy.data.worlds.new("env")
    scene.world = world
    nt = world.node_tree
    nt.nodes.clear()
    tex = nt.nodes.new("ShaderNodeTexEnvironment")
    img = bpy.data.images.load(env)
    img.colorspace_settings.name = "Non-Color"  # raw linear values, no view transform on input
    tex.image = img
    tex.interpolation = "Linear"
    bg = nt.nodes.new("ShaderNodeBackground")
    wo = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(tex.outputs["Color"], bg.inputs["Color"])
    nt.links.new(bg.outputs["Background"], wo.inputs["Surface"])

    bpy.ops.mesh.primitive_uv_sphere_add(segments=192, ring_count=96, radius=1.0)
    sphere = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    mat = bpy.data.materials.new("mirror")
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (1, 1, 1, 1)
    bsdf.inputs["Metallic"].default_value = 1.0
    bsdf.inputs["Roughness"].default_value = 0.0
    sphere.data.materials.append(mat)

    cam_data = bpy.data.cameras.new("cam")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = ortho
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    cam.location = (0.0, -5.0, 0.0)
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)  # local -Z (view) -> +Y, local +Y (up) -> +Z
    scene.camera = cam
    bpy.ops.render.render(write_still=True)
    print(json.dumps({"ok": True}))
""")


def _env_image(height: int = 64) -> np.ndarray:
    dirs = equirect_dirs(height).numpy()
    img = np.full(dirs.shape, 0.15, np.float32)
    for d, col in BLOBS:
        d = np.asarray(d, np.float64) / np.linalg.norm(d)
        cosang = dirs @ d
        img += np.exp((cosang - 1) / 0.04)[..., None].astype(np.float32) * np.asarray(col, np.float32)
    return img


def _our_render(env: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    light = EnvironmentLight(64, init=env)
    c = (np.arange(RES) + 0.5) / RES * ORTHO - ORTHO / 2
    x, z = np.meshgrid(c, -c, indexing="xy")  # row 0 at the top (+Z)
    r2 = x**2 + z**2
    mask = r2 < 0.8**2  # interior only: the silhouette depends on pixel filtering and tessellation
    y = -np.sqrt(np.clip(1 - r2, 0, 1))
    n = torch.tensor(np.stack([x, y, z], -1)[mask], dtype=torch.float32)
    view = torch.tensor([[0.0, 1.0, 0.0]]).expand_as(n)  # camera -> surface
    with torch.no_grad():
        rad = light.radiance(reflect(view, n)).numpy()
    img = np.zeros((RES, RES, 3), np.float32)
    img[mask] = rad
    return img, mask


def test_mirror_sphere_matches_cycles(tmp_path):
    env = _env_image()
    env_path = tmp_path / "env.exr"
    write_exr(env_path, env)
    out = tmp_path / "render.exr"
    environ = dict(os.environ)
    environ.setdefault("BLENDER_USER_RESOURCES", str(tmp_path / "blender_user"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(env_path), str(out), str(RES), str(ORTHO)],
        capture_output=True, text=True, timeout=300, env=environ,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"]
    cyc = read_exr(out)
    ours, mask = _our_render(env)
    a, b = cyc[mask], ours[mask]
    mse = float(((a - b) ** 2).mean())
    psnr = 10 * math.log10(float(b.max()) ** 2 / mse)
    corr = float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])
    # A wrong convention (u flipped, Y-up, rotated) gives corr well below 0.5 with these blobs.
    flipped = ours[:, ::-1][mask]
    corr_flip = float(np.corrcoef(a.reshape(-1), flipped.reshape(-1))[0, 1])
    print(f"mirror sphere vs Cycles: PSNR {psnr:.1f} dB, correlation {corr:.4f} (left-right flipped: {corr_flip:.3f})")
    assert corr > 0.95 and psnr > 25
    assert corr_flip < 0.8
