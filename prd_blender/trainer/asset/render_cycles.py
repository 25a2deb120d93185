"""Launch Cycles on a baked asset from the trainer, which never imports ``bpy`` itself; and write a capture's
views as the cameras such a job takes (``cycles_transforms``).

Why a subprocess: the trainer's environment need not have Blender, and Blender's bundled libraries (OIDN,
TBB, OpenEXR) must not share a process with torch. The renderer is ``cycles_script.py`` next to this file,
run by the first of: this Python if it can import ``bpy`` (checked without importing it), the Python named
by ``$PRD_BPY_PYTHON``, or a ``blender`` executable (``$PRD_BLENDER`` or on the PATH).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("cycles_script.py")


class CyclesUnavailable(RuntimeError):
    """No Blender to render with (neither the ``bpy`` module nor a ``blender`` binary)."""


def renderer_command() -> list[str]:
    """The command prefix that runs ``cycles_script.py`` with a job file appended."""
    if importlib.util.find_spec("bpy") is not None:
        return [sys.executable, str(SCRIPT)]
    env_py = os.environ.get("PRD_BPY_PYTHON")
    if env_py:
        return [env_py, str(SCRIPT)]
    blender = os.environ.get("PRD_BLENDER") or shutil.which("blender")
    if blender:
        return [blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(SCRIPT), "--"]
    raise CyclesUnavailable(
        "Cycles rendering needs Blender: the 'bpy' module is not installed in this Python "
        f"({sys.executable}; pip install bpy==5.0.1), PRD_BPY_PYTHON is not set and no 'blender' is on the PATH "
        "(or set PRD_BLENDER)"
    )


def render_glb(glb: Path, transforms: Path, frames: list[int], lightings: list[dict], dest: Path, size: int = 128,
               samples: int = 32, seed: int = 0, timeout: float = 3600.0, height: int | None = None) -> dict:
    """Render ``glb`` at the ``frames`` of ``transforms`` under each lighting ``{name, file, strength}``, ``size``
    pixels wide and ``height`` (default ``size``) high.

    Returns the renderer's summary (timings, Blender version); images land in ``dest/<name>/<frame>.exr``.
    """
    glb = Path(glb)
    if not glb.is_file():
        raise FileNotFoundError(f"no GLB to render: {glb} (run prd mesh first)")
    for light in lightings:
        if not Path(light["file"]).is_file():
            raise FileNotFoundError(f"HDRI not found: {light['file']}")
    cmd = renderer_command()
    dest.mkdir(parents=True, exist_ok=True)
    job = {"glb": str(glb.resolve()), "transforms": str(Path(transforms).resolve()), "frames": list(frames),
           "lightings": [{**x, "file": str(Path(x["file"]).resolve())} for x in lightings],
           "dest": str(dest.resolve()), "size": size, "height": height or size, "samples": samples, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="prd_cycles_") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        # Blender must not read or write the user's ~/.config/blender (preferences would change the render)
        env = {**os.environ, "BLENDER_USER_RESOURCES": str(Path(tmp) / "blender_user")}
        proc = subprocess.run([*cmd, str(job_file)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"Cycles render failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return json.loads((dest / "render.json").read_text())


# How far (pixels) a principal point may sit from the image centre: the Cycles camera here has no lens shift.
MAX_PRINCIPAL_OFFSET_PX = 0.5


def cycles_transforms(views: list, dest: Path) -> Path:
    """A NeRF-style transforms.json (Blender camera axes) for ``views``, as ``render_cycles`` reads it.

    Raises ValueError for what one Cycles job cannot reproduce: views of different sizes or fields of view,
    non-square pixels, or a principal point off the image centre."""
    if not views:
        raise ValueError("no views to render")
    w, h = views[0].width, views[0].height
    frames, angles = [], []
    for v in views:
        K = np.asarray(v.K, np.float64)
        if (v.width, v.height) != (w, h):
            raise ValueError(f"view {v.name} is {v.width}x{v.height}, the first one {w}x{h}: one Cycles job, one size")
        if abs(K[0, 0] - K[1, 1]) > 1e-3 * K[0, 0]:
            raise ValueError(f"view {v.name} has non-square pixels (fx {K[0, 0]:.2f}, fy {K[1, 1]:.2f})")
        off = max(abs(K[0, 2] - w / 2), abs(K[1, 2] - h / 2))
        if off > MAX_PRINCIPAL_OFFSET_PX:
            raise ValueError(f"view {v.name} has its principal point {off:.1f} px off the image centre")
        angles.append(2 * math.atan(w / (2 * K[0, 0])))
        # OpenCV camera (x right, y down, z forward) -> Blender's (x right, y up, looking down -z)
        c2w = np.asarray(v.cam_to_world, np.float64) @ np.diag([1.0, -1.0, -1.0, 1.0])
        frames.append({"file_path": f"views/{Path(v.name).stem}", "transform_matrix": c2w.tolist()})
    if max(angles) - min(angles) > 1e-4:
        raise ValueError("the views have different fields of view; the Cycles job takes one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"camera_angle_x": angles[0], "frames": frames}, indent=1), encoding="utf-8")
    return dest
