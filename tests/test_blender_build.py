"""Build the extension zip with Blender's extension tool, install it into a headless Blender, use it, remove it.

The install runs in a separate Python process with its own Blender user folder, so the installed copy
(package ``bl_ext.user_default.prd_blender``) never meets the source-tree add-on the other tests register.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile

import pytest
from blender_util import REPO

pytest.importorskip("bpy")

INSTALL_SCRIPT = r"""
import json, sys, time
import bpy  # first: it puts addon_utils on sys.path
import addon_utils
from importlib import import_module

zip_path = sys.argv[1]
res = {}
res["install"] = list(bpy.ops.extensions.package_install_files(
    filepath=zip_path, repo="user_default", enable_on_install=True))
mod = "bl_ext.user_default.prd_blender"
res["enabled"] = mod in bpy.context.preferences.addons
res["panel"] = hasattr(bpy.types, "PRD_PT_reconstruct")
res["operators"] = sorted(n for n in dir(bpy.ops.prd) if not n.startswith("_"))
res["scene_props"] = hasattr(bpy.context.scene, "prd")
res["file"] = sys.modules[mod].__file__

# The installed extension's trainer must be importable by a trainer process (PYTHONPATH = its repo folder).
prefs = bpy.context.preferences.addons[mod].preferences
prefs.python_path = sys.executable
ops = import_module(mod + ".operators")
bpy.ops.prd.check_environment()
ops._env_check.timeout_s = 300
while ops.poll_env() is not None:
    time.sleep(0.05)
res["check_ok"] = prefs.check_ok
res["check"] = prefs.check_result
job = import_module(mod + ".job")
chk = job.EnvCheck(sys.executable)
chk.start()
while not chk.poll():
    time.sleep(0.05)
res["trainer_path"] = (chk.result or {}).get("trainer_path")

addon_utils.disable(mod, default_set=True)
res["panel_after_disable"] = hasattr(bpy.types, "PRD_PT_reconstruct")
repo_index = [r.module for r in bpy.context.preferences.extensions.repos].index("user_default")
res["uninstall"] = list(bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="prd_blender"))
print("RESULT " + json.dumps(res))
"""


def test_build_install_enable_uninstall(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "build_extension.py"), "--out", str(dist)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    zips = list(dist.glob("prd_blender-*.zip"))
    assert len(zips) == 1, zips
    names = zipfile.ZipFile(zips[0]).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "trainer/cli.py" in names
    assert not any("__pycache__" in n or n.startswith("tests/") or n.endswith((".nbi", ".nbc")) for n in names)

    env = dict(os.environ, BLENDER_USER_RESOURCES=tempfile.mkdtemp(prefix="prd-ext-user-", dir=tmp_path))
    r = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(zips[0])], capture_output=True, text=True,
                       timeout=600, env=env, cwd=tmp_path)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout + r.stderr
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["install"] == ["FINISHED"] and res["enabled"] and res["panel"] and res["scene_props"]
    assert {"start", "resume", "cancel", "open_log", "import_result", "check_environment",
            "create_environment"} <= set(res["operators"])
    assert res["file"].startswith(env["BLENDER_USER_RESOURCES"])
    assert res["check_ok"], res["check"]
    # The trainer process imported the trainer shipped inside the installed extension.
    assert res["trainer_path"].startswith(env["BLENDER_USER_RESOURCES"])
    assert not res["panel_after_disable"]
    assert res["uninstall"] == ["FINISHED"]
