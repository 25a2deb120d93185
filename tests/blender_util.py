"""Helpers for the headless-bpy tests of the Blender side (tests/test_blender_*.py)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "sample_capture"


def bpy_or_skip():
    return pytest.importorskip("bpy")


def enable_addon():
    """Enable the source-tree package as an add-on (so its preferences exist) and point it at this Python."""
    import addon_utils
    import bpy

    addon_utils.enable("prd_blender", default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons["prd_blender"].preferences
    # The interpreter running the tests has torch, numba and pillow: it serves as the trainer Python.
    prefs.python_path = sys.executable
    return prefs


def reset_props(scene) -> None:
    """Fresh panel settings (Blender keeps scene properties between tests in one process)."""
    for name in ("colmap_path", "transforms_path", "photos_path", "output_dir", "message", "log_path", "result_dir",
                 "known_light_path"):
        setattr(scene.prd, name, "")
    scene.prd.source = "TRANSFORMS"
    scene.prd.quality = "CUSTOM"
    scene.prd.device = "cpu"
    scene.prd.overwrite = False
    scene.prd.use_known_light, scene.prd.known_light_rotation = False, 0.0
    scene.prd.dielectric = False
    scene.prd.status = "IDLE"
    # The mesh step and the automatic import add a minute per job: tests that want them turn them on.
    scene.prd.build_mesh = False
    scene.prd.auto_import = False


def drive(poll, timeout_s: float = 120.0, until=None) -> list[float]:
    """Call a timer callback the way Blender's event loop would, until it returns None (or ``until()``).

    Returns the duration of every call: the main-thread time the UI would lose to it.
    """
    durations = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        again = poll()
        durations.append(time.perf_counter() - t0)
        if again is None or (until is not None and until()):
            return durations
        time.sleep(0.02)
    raise AssertionError(f"{poll.__name__} did not finish within {timeout_s} s")


def copy_capture(dest: Path) -> Path:
    shutil.copytree(SAMPLE, dest)
    return dest


def _link(socket):
    assert socket.is_linked, socket.name
    return socket.links[0]


def check_gltf_wiring(mat) -> dict:
    """DESIGN.md §4: albedo (sRGB) -> Base Color; one Non-Color image -> Separate Color, G -> Roughness,
    B -> Metallic; Non-Color image -> Normal Map (tangent space) -> Normal. Returns the three images."""
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    base = _link(bsdf.inputs["Base Color"]).from_node
    assert base.type == "TEX_IMAGE" and base.image.colorspace_settings.name == "sRGB"
    rough, metal = _link(bsdf.inputs["Roughness"]), _link(bsdf.inputs["Metallic"])
    assert rough.from_node.type == metal.from_node.type == "SEPARATE_COLOR"
    assert rough.from_node == metal.from_node
    assert (rough.from_socket.name, metal.from_socket.name) == ("Green", "Blue")
    orm = _link(rough.from_node.inputs["Color"]).from_node
    assert orm.type == "TEX_IMAGE" and orm.image.colorspace_settings.name == "Non-Color"
    nmap = _link(bsdf.inputs["Normal"]).from_node
    assert nmap.type == "NORMAL_MAP" and nmap.space == "TANGENT"
    ntex = _link(nmap.inputs["Color"]).from_node
    assert ntex.type == "TEX_IMAGE" and ntex.image.colorspace_settings.name == "Non-Color"
    return {"albedo": base.image, "orm": orm.image, "normal": ntex.image, "normal_map": nmap}


def glb_json(path: Path) -> dict:
    """The JSON chunk of a .glb (glTF binary: 12-byte header, then the JSON chunk)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2
    length, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20:20 + length])
