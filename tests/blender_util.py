"""Helpers for the headless-bpy tests of the Blender side (tests/test_blender_*.py)."""

from __future__ import annotations

import shutil
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
    for name in ("colmap_path", "transforms_path", "photos_path", "output_dir", "message", "log_path", "result_dir"):
        setattr(scene.prd, name, "")
    scene.prd.source = "TRANSFORMS"
    scene.prd.quality = "CUSTOM"
    scene.prd.device = "cpu"
    scene.prd.overwrite = False
    scene.prd.status = "IDLE"


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
