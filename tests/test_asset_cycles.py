"""The baked GLB through Blender's glTF importer and Cycles (subprocess), and the clear error without Blender."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from prd_blender.trainer.asset import bake_asset
from prd_blender.trainer.asset import render_cycles as RC
from prd_blender.trainer.asset.bench import read_render
from prd_blender.trainer.asset.synthetic import sphere_gaussians, write_run_folder

HDRI = "../shared/data/hdri/pedestrian_overpass_1k.hdr"


def test_no_blender_names_the_missing_bpy_module(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("PRD_BPY_PYTHON", raising=False)
    monkeypatch.delenv("PRD_BLENDER", raising=False)
    monkeypatch.setattr(RC.shutil, "which", lambda name: None)
    with pytest.raises(RC.CyclesUnavailable, match="'bpy' module is not installed"):
        RC.renderer_command()


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy not installed")
def test_glb_renders_in_cycles(tmp_path):
    from pathlib import Path

    if not Path(HDRI).is_file():
        pytest.skip(f"HDRI not found: {HDRI}")
    out = write_run_folder(tmp_path / "run", sphere_gaussians(radius=0.5))
    bake_asset(out, "preview", 256, device="cpu", grid=48, render=64, faces=2000, extra_views=8)
    # a camera on +X looking at the origin (Blender camera axes: looks down -Z, +Y up)
    c2w = [[0, 0, 1, 3], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    tf = tmp_path / "transforms.json"
    tf.write_text(json.dumps({"camera_angle_x": 2 * math.atan(0.3),
                              "frames": [{"file_path": "test/r_000", "transform_matrix": c2w}]}))
    info = RC.render_glb(out / "mesh.glb", tf, [0], [{"name": "env", "file": HDRI, "strength": 1.0}],
                         tmp_path / "cycles", size=32, samples=4)
    assert info["faces"] > 1000 and info["blender"]
    img = read_render(tmp_path / "cycles" / "env" / "r_000.exr")
    assert img.shape == (32, 32, 4)
    assert img[16, 16, 3] > 0.99 and img[0, 0, 3] < 0.01  # the sphere fills the centre, film is transparent
    # the red upper half through the importer's sRGB base colour: red dominates above the equator
    top = img[9, 16, :3]
    assert top[0] > 2 * top[2] and np.isfinite(img).all()


_TANGENTS_SCRIPT = """
import sys, numpy as np, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
ob = next(o for o in bpy.context.scene.objects if o.type == "MESH")
me = ob.data
me.calc_tangents(uvmap=me.uv_layers.active.name)
n = len(me.loops)
def get(coll, attr, k):
    a = np.empty(n * k)
    coll.foreach_get(attr, a)
    return a.reshape(n, k) if k > 1 else a
vi = get(me.loops, "vertex_index", 1).astype(int)
co = np.empty(len(me.vertices) * 3)
me.vertices.foreach_get("co", co)
m = np.array(ob.matrix_world)[:3, :3]
np.savez(sys.argv[2], pos=co.reshape(-1, 3)[vi] @ m.T, uv=get(me.uv_layers.active.data, "uv", 2),
         tangent=get(me.loops, "tangent", 3) @ m.T, sign=get(me.loops, "bitangent_sign", 1))
"""


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy not installed")
def test_normal_map_tangents_are_blenders(tmp_path):
    # The normal map is baked in our tangent frame; Blender's Normal Map node decodes it in the MikkTSpace
    # frame it computes itself on import. The two must agree, or the baked normals come out turned.
    import os
    import subprocess
    import sys

    from scipy.spatial import cKDTree

    from prd_blender.trainer.asset.gltf import read_ply_columns
    from prd_blender.trainer.asset.uv import mikk_tangents

    out = write_run_folder(tmp_path / "run", sphere_gaussians(radius=0.5))
    bake_asset(out, "preview", 256, device="cpu", grid=48, render=64, faces=2000, extra_views=8)
    script = tmp_path / "tangents.py"
    script.write_text(_TANGENTS_SCRIPT)
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender_user")}
    subprocess.run([sys.executable, str(script), str(out / "mesh.glb"), str(tmp_path / "t.npz")], check=True,
                   env=env, capture_output=True, timeout=300)
    blender = np.load(tmp_path / "t.npz")
    cols, f = read_ply_columns(out / "mesh.ply")  # the baker's own vertex normals, as exported
    v, uv, nrm = (np.stack([cols[k] for k in keys], 1) for keys in ("xyz", "st", ("nx", "ny", "nz")))
    ours = mikk_tangents(v, f, nrm / np.linalg.norm(nrm, axis=1, keepdims=True), uv)
    dist, j = cKDTree(np.concatenate([v, uv], 1)).query(np.concatenate([blender["pos"], blender["uv"]], 1))
    assert dist.max() < 1e-4  # every loop found its vertex (position and UV)
    cos = np.einsum("ij,ij->i", blender["tangent"], ours[j, :3])
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 0.1 and np.mean(angle) < 1.0
    assert (blender["sign"] == ours[j, 3]).mean() > 0.99
