"""Render every perspective camera of a .blend with Cycles into a ``transforms.json`` capture.

Run by the Reconstruct job for the "Scene Cameras" source in a separate Blender process, so the UI stays
responsive (never imported by the extension itself):

    blender -b SCENE.blend --python scene_render.py -- DEST [--samples N] [--max-size PX]
    python scene_render.py DEST --blend SCENE.blend [...]        (Blender as the ``bpy`` module)

Prints one JSON line per rendered camera (``{"event": "scene_capture", "done", "total", "camera"}``).
The film is transparent (alpha = object mask, as the trainer expects of a synthetic capture) and the view
transform Standard, so the PNGs are plain sRGB of the scene-linear render (the trainer's ``srgb`` tone map).
Only the saved copy of the scene is changed, never the user's file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


def _emit(**event) -> None:
    print(json.dumps({**event, "t": round(time.time(), 3)}), flush=True)


def _args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    p = argparse.ArgumentParser(prog="scene_render")
    p.add_argument("dest", type=Path)
    p.add_argument("--blend", help="the .blend to open (when run with the bpy module)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--max-size", type=int, default=0, help="longer image side at most this (0: as the scene)")
    return p.parse_args(argv)


def intrinsics(projection, width: int, height: int) -> dict:
    """Pinhole intrinsics (pixels, OpenCV: y down) from Blender's OpenGL projection matrix of a camera.

    u = fx * x/z + cx with fx = P00 * w/2 and cx = w/2 * (1 - P02); v likewise with y flipped:
    fy = P11 * h/2, cy = h/2 * (1 + P12). Covers lens, sensor fit, pixel aspect and shift alike."""
    return {
        "fl_x": projection[0][0] * width / 2.0, "fl_y": projection[1][1] * height / 2.0,
        "cx": width / 2.0 * (1.0 - projection[0][2]), "cy": height / 2.0 * (1.0 + projection[1][2]),
        "w": width, "h": height,
    }


def main() -> int:
    a = _args()
    import bpy

    if a.blend:
        bpy.ops.wm.open_mainfile(filepath=a.blend)
    scene = bpy.context.scene
    cams = sorted((o for o in scene.objects if o.type == "CAMERA" and o.data.type == "PERSP"), key=lambda o: o.name)
    if len(cams) < 2:
        print("prd: error: the scene needs at least 2 perspective cameras (it has "
              f"{len(cams)})", file=sys.stderr)
        return 2
    r = scene.render
    r.engine = "CYCLES"
    scene.cycles.samples = max(1, a.samples)
    r.film_transparent = True
    r.use_border = False
    fmt = r.image_settings
    fmt.file_format, fmt.color_mode, fmt.color_depth = "PNG", "RGBA", "8"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure, scene.view_settings.gamma = 0.0, 1.0
    w0, h0 = r.resolution_x, r.resolution_y
    pct = r.resolution_percentage
    if a.max_size and max(w0, h0) * pct / 100 > a.max_size:
        pct = max(1, int(100 * a.max_size / max(w0, h0)))
    r.resolution_percentage = pct
    w, h = int(w0 * pct / 100), int(h0 * pct / 100)
    images = a.dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    frames = []
    for i, cam in enumerate(cams):
        scene.camera = cam
        name = f"{i:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', cam.name)}.png"
        r.filepath = str(images / name)
        bpy.ops.render.render(write_still=True)
        proj = cam.evaluated_get(depsgraph).calc_matrix_camera(
            depsgraph, x=w, y=h, scale_x=r.pixel_aspect_x, scale_y=r.pixel_aspect_y)
        # matrix_world may carry object scale; the capture wants a rigid camera-to-world.
        c2w = cam.matrix_world.normalized()
        frames.append({"file_path": f"images/{name}", "transform_matrix": [list(row) for row in c2w],
                       **intrinsics(proj, w, h), "camera": cam.name})
        _emit(event="scene_capture", done=i + 1, total=len(cams), camera=cam.name)
    out = {"prd_scene_capture": True, "blend": a.blend or bpy.data.filepath, "frames": frames}
    (a.dest / "transforms.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
