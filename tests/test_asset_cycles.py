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
