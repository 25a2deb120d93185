"""Registration, properties and the preferences operators of the Blender side (headless bpy)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from blender_util import bpy_or_skip, drive, enable_addon, reset_props

bpy = bpy_or_skip()

import prd_blender  # noqa: E402
from prd_blender import job as jobmod  # noqa: E402
from prd_blender import operators  # noqa: E402

OPERATORS = ("start", "resume", "cancel", "open_log", "import_result", "check_environment", "create_environment",
             "relight_world", "relight_render", "recovered_world", "export_glb")


def _registered() -> bool:
    return hasattr(bpy.types, "PRD_PT_reconstruct") and hasattr(bpy.types.Scene, "prd")


def test_register_unregister_twice_is_idempotent():
    enable_addon()
    assert _registered()
    prd_blender.register()  # already registered: no error, nothing doubled
    prd_blender.register()
    assert _registered()
    prd_blender.unregister()
    prd_blender.unregister()
    assert not _registered()
    assert not hasattr(bpy.types, "PRD_OT_start")
    prd_blender.register()
    prd_blender.register()
    assert _registered() and all(hasattr(bpy.ops.prd, name) for name in OPERATORS)
    panel = bpy.types.PRD_PT_reconstruct
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "Reconstruct")


def test_importing_the_package_does_not_import_bpy():
    """The trainer process imports prd_blender.trainer through prd_blender/__init__.py."""
    code = "import sys, prd_blender, prd_blender.job, prd_blender.ply; assert 'bpy' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_quality_presets_and_properties():
    enable_addon()
    props = bpy.context.scene.prd
    reset_props(bpy.context.scene)
    assert {i.identifier for i in props.bl_rna.properties["source"].enum_items} == {
        "PHOTOS", "COLMAP", "TRANSFORMS", "SCENE"}
    assert {i.identifier for i in props.bl_rna.properties["device"].enum_items} == {"auto", "cuda", "cpu"}
    for q, (its, res, distill) in jobmod.QUALITY_PRESETS.items():
        props.quality = q
        assert operators._quality(props) == (its, res, distill)
    props.quality, props.iterations, props.resolution, props.distill_iterations = "CUSTOM", 123, 0, 0
    assert operators._quality(props) == (123, None, 0)  # 0 = full resolution, radiance field only


def test_check_environment_reports_versions():
    prefs = enable_addon()
    assert bpy.ops.prd.check_environment() == {"FINISHED"}
    stalls = drive(operators.poll_env, 120)
    assert prefs.check_ok, prefs.check_result
    assert "torch " in prefs.check_result and "numba " in prefs.check_result and "CUDA " in prefs.check_result
    assert max(stalls) < 0.05
    prefs.python_path = "/nonexistent/python3"
    with pytest.raises(RuntimeError, match="not found"):
        bpy.ops.prd.check_environment()
    assert not prefs.check_ok


def test_check_environment_times_out():
    # A Python that hangs: the check gives up after its timeout instead of blocking.
    chk = jobmod.EnvCheck(sys.executable, timeout_s=0.5)
    chk.proc = jobmod.BackgroundProcess([sys.executable, "-c", "import time; time.sleep(30)"])
    chk.proc.start()
    while not chk.poll():
        pass
    assert "longer than" in chk.error


def test_create_environment_offline(tmp_path):
    """The installer's machinery without network: an empty package list only creates the venv."""
    prefs = enable_addon()
    prefs.venv_dir = str(tmp_path / "trainer env ü")
    prefs.packages = ""
    prefs.base_python = sys.executable
    assert bpy.ops.prd.create_environment() == {"FINISHED"}
    drive(operators.poll_env, 120)
    assert prefs.install_status == "Done", prefs.install_status
    venv_py = jobmod.venv_python(tmp_path / "trainer env ü")
    assert venv_py.exists() and prefs.python_path == str(venv_py)
    # The new (empty) environment is checked at once and found to lack torch.
    assert not prefs.check_ok and "torch missing" in prefs.check_result
    prefs.python_path = sys.executable


def test_install_steps_use_the_chosen_torch_index(tmp_path):
    steps = jobmod.install_steps("py", tmp_path / "v", ["torch", "numba", "pillow"], "https://download.pytorch.org/whl/cpu")
    assert steps[0][:3] == ["py", "-m", "venv"] and "--without-pip" not in steps[0]
    torch_step = [s for s in steps if "torch" in s][0]
    assert torch_step[-2:] == ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert "numba" in steps[-1] and "--index-url" not in steps[-1]


def test_import_without_a_result_reports_clearly(tmp_path):
    enable_addon()
    with pytest.raises(RuntimeError, match="no manifest.json"):
        bpy.ops.prd.import_result(directory=str(tmp_path))


def test_ply_reader_reads_pbr_fields(tmp_path):
    import numpy as np

    from prd_blender import ply

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "albedo_0", "albedo_1", "albedo_2", "roughness", "metallic"]
    data = np.zeros(3, dtype=[(n, "<f4") for n in names])
    data["x"] = [1, 2, 3]
    data["roughness"] = 0.25
    data["scale_1"] = np.log(0.5)
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 3\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    path = tmp_path / "g.ply"
    path.write_bytes(header.encode() + data.tobytes())
    attrs = ply.gaussian_attributes(ply.read_vertices(path))
    assert attrs["position"][:, 0].tolist() == [1, 2, 3]
    assert attrs["opacity"] == pytest.approx(0.5) and attrs["radius"] == pytest.approx(1.0)
    assert attrs["roughness"] == pytest.approx(0.25) and attrs["albedo"].shape == (3, 3)
    assert attrs["color"] == pytest.approx(ply.srgb_to_linear(np.full((3, 3), 0.5)))
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ply.PlyError, match="binary"):
        ply.read_vertices(path)


class _Layout:
    """Stands in for UILayout (no window in headless bpy): checks every prop and operator that is drawn."""

    def __init__(self, drawn: list):
        self.__dict__["drawn"] = drawn

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if name == "prop":
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, prop
            elif name == "operator":
                group, op = args[0].split(".")
                assert hasattr(getattr(bpy.ops, group), op), args[0]
            elif name == "label":
                assert isinstance(kwargs.get("text", ""), str)
            self.drawn.append((name, args, kwargs))
            return _Layout(self.drawn)

        return call

    def __setattr__(self, name, value):
        self.drawn.append(("set", name, value))


@pytest.mark.parametrize("status", ["IDLE", "RUNNING", "FAILED"])
@pytest.mark.parametrize("source", ["COLMAP", "TRANSFORMS", "PHOTOS", "SCENE"])
def test_panel_and_preferences_draw(source, status):
    from types import SimpleNamespace

    prefs = enable_addon()
    scene = bpy.context.scene
    reset_props(scene)
    scene.prd.source, scene.prd.status, scene.prd.message = source, status, "x " * 50
    scene.prd.quality = "CUSTOM"
    scene.prd.iteration = 3 if status == "RUNNING" else 0
    drawn: list = []
    ctx = SimpleNamespace(scene=scene, region=None, preferences=bpy.context.preferences)
    for panel in (bpy.types.PRD_PT_reconstruct, bpy.types.PRD_PT_relight, bpy.types.PRD_PT_export):
        panel.draw(SimpleNamespace(layout=_Layout(drawn)), ctx)
    labels = " ".join(kw.get("text", "") for name, _, kw in drawn if name == "label")
    ops = {a[0] for name, a, _ in drawn if name == "operator"}
    assert {"prd.start", "prd.resume", "prd.cancel", "prd.open_log", "prd.import_result", "prd.relight_world",
            "prd.relight_render", "prd.recovered_world", "prd.export_glb"} <= ops
    if source == "SCENE":
        assert "rendered with Cycles" in labels
    if status == "RUNNING":
        assert "Iteration 3/" in labels and "PSNR" in labels and "Time left" in labels
    drawn.clear()
    prefs.check_result = "Python 3.11, torch 2.5"
    class Prefs:  # the preferences, with our layout
        layout = _Layout(drawn)

        def __getattr__(self, name):
            return getattr(prefs, name)

    type(prefs).draw(Prefs(), ctx)
    ops = {a[0] for name, a, _ in drawn if name == "operator"}
    assert ops == {"prd.check_environment", "prd.create_environment"}
