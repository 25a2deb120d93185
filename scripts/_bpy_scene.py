"""Helpers shared by the scripts that render synthetic captures with Blender's ``bpy`` module.

Used by ``make_sample_capture.py`` and ``make_relight_benchmark.py``. Only standard-library imports
at module level: ``bpy`` is imported through :func:`import_bpy`, which must run first.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

# Camera elevations are spread uniformly in z = sin(elevation) over this range: mostly the upper
# hemisphere, plus a band of below-horizon views so the underside is not completely unobserved.
Z_MIN, Z_MAX = -0.35, 0.95
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def import_bpy() -> ModuleType:
    """Import bpy with its user resources redirected to a throwaway folder.

    bpy otherwise creates/reads ~/.config/blender (user prefs, add-ons), which would make the
    render depend on the machine and litter the home directory. The variable must be set before
    the module is imported, hence the deferred import.
    """
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="prd_blender_user_")
    import bpy

    return bpy


def fibonacci_directions(
    n: int, azimuth_offset: float = 0.0, z_min: float = Z_MIN, z_max: float = Z_MAX
) -> list[tuple[float, float, float]]:
    """Deterministic, near-uniform unit directions on the spherical band z_min <= z <= z_max."""
    dirs = []
    for i in range(n):
        z = z_max - (z_max - z_min) * (i + 0.5) / n
        r = math.sqrt(max(0.0, 1.0 - z * z))
        phi = i * GOLDEN_ANGLE + azimuth_offset
        dirs.append((r * math.cos(phi), r * math.sin(phi), z))
    return dirs


def link(nt: Any, out_socket: Any, in_socket: Any) -> None:
    nt.links.new(out_socket, in_socket)


def _cycles_script() -> ModuleType:
    """The package's Cycles script, loaded by path: it holds the one definition of the ground truth's render
    settings, and importing it as ``prd_blender.trainer...`` would pull in the trainer package."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "prd_blender" / "trainer" / "asset" / "cycles_script.py"
    spec = importlib.util.spec_from_file_location("prd_cycles_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_render(bpy: ModuleType, size: int, samples: int, seed: int) -> None:
    """Cycles on CPU, OIDN on the colour, transparent film, Standard view transform, 8-bit RGBA PNG."""
    scene = bpy.context.scene
    _cycles_script().setup_cycles(scene, size, samples, seed)
    set_png_output(scene)
    # No date/render-time/hostname metadata in the PNGs (see also strip_png_text): regenerating
    # gives byte-identical files (Cycles on CPU with a fixed seed is deterministic), so git only
    # sees real changes.
    for prop in scene.render.bl_rna.properties.keys():
        if prop.startswith("use_stamp"):
            setattr(scene.render, prop, False)


def set_png_output(scene: Any) -> None:
    """8-bit RGBA PNG output (display space, straight alpha)."""
    img = scene.render.image_settings
    img.media_type = "IMAGE"  # Blender 5.0: multilayer EXR is a media type, not a file format
    img.file_format = "PNG"
    img.color_mode = "RGBA"
    img.color_depth = "8"
    img.compression = 100  # smallest files; encoding time is negligible next to rendering


def strip_png_text(path: Path) -> None:
    """Drop textual PNG chunks in place (Cycles always writes its timings there), without re-encoding."""
    data = path.read_bytes()
    out, pos = [data[:8]], 8  # 8-byte signature, then chunks: length, type, payload, CRC
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(data[pos:end])
        pos = end
    path.write_bytes(b"".join(out))


def add_camera(bpy: ModuleType, name: str, object_radius: float, camera_radius: float, fill: float) -> Any:
    """A camera whose fixed FOV makes a bounding sphere of ``object_radius`` span ``fill`` of the frame."""
    cam_data = bpy.data.cameras.new(name)
    cam_data.sensor_fit = "HORIZONTAL"
    half_extent = object_radius / math.sqrt(camera_radius**2 - object_radius**2)
    cam_data.angle = 2.0 * math.atan(half_extent / fill)
    cam_data.clip_start, cam_data.clip_end = 0.1, 100.0
    cam = bpy.data.objects.new(name, cam_data)
    bpy.context.scene.collection.objects.link(cam)
    bpy.context.scene.camera = cam
    return cam


def aim_camera(bpy: ModuleType, cam: Any, position: Any) -> None:
    """Place the camera at ``position`` looking at the origin with world Z up."""
    from mathutils import Vector

    pos = Vector(position)
    cam.location = pos
    # Camera looks down its local -Z with +Y up: aim -Z at the origin, keep world Z up.
    cam.rotation_euler = (-pos).to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
