"""Add-on preferences: which Python runs the trainer, checking it, and creating an environment for it."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

ADDON_ID = __package__  # "prd_blender", or "bl_ext.<repo>.prd_blender" once installed as an extension

TORCH_BUILDS = [
    ("DEFAULT", "PyPI Default", "pip's default torch (CUDA build on Linux, CPU build on Windows, MPS on macOS)"),
    ("CPU", "CPU Only", "Small CPU-only build (download.pytorch.org/whl/cpu)"),
    ("CU124", "CUDA 12.4", "CUDA 12.4 build (download.pytorch.org/whl/cu124)"),
]
TORCH_INDEX = {
    "DEFAULT": "",
    "CPU": "https://download.pytorch.org/whl/cpu",
    "CU124": "https://download.pytorch.org/whl/cu124",
}
DEFAULT_PACKAGES = "torch numpy numba pillow OpenEXR"


def user_dir(sub: str) -> Path:
    """A writable folder of this extension (Blender's per-extension user folder; a temp folder otherwise)."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, path=sub, create=True))
    except (ValueError, AttributeError, OSError):
        # Not installed as an extension (e.g. run from the source tree): fall back to a temp folder.
        path = Path(tempfile.gettempdir()) / "prd_blender" / sub
        path.mkdir(parents=True, exist_ok=True)
        return path


class PRD_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python_path: StringProperty(
        name="Trainer Python", subtype="FILE_PATH",
        description="Python interpreter with torch (and gsplat for CUDA) that runs the trainer",
    )
    check_result: StringProperty(name="Check Result", default="")
    check_ok: BoolProperty(default=False)
    venv_dir: StringProperty(
        name="Environment Folder", subtype="DIR_PATH",
        description="Where to create the trainer environment (empty: the extension's user folder)",
    )
    base_python: StringProperty(
        name="Base Python", subtype="FILE_PATH",
        description="Python that creates the environment (empty: Blender's own Python)",
    )
    torch_build: EnumProperty(name="torch Build", items=TORCH_BUILDS, default="DEFAULT")
    with_gsplat: BoolProperty(name="gsplat (CUDA)", default=False,
                              description="Also install gsplat for the CUDA backend (needs an NVIDIA GPU)")
    packages: StringProperty(name="Packages", default=DEFAULT_PACKAGES,
                             description="Packages pip installs into the environment, separated by spaces")
    install_status: StringProperty(name="Install Status", default="")

    def resolved_venv_dir(self) -> Path:
        return Path(bpy.path.abspath(self.venv_dir)) if self.venv_dir else user_dir("venv")

    def resolved_base_python(self) -> str:
        return bpy.path.abspath(self.base_python) if self.base_python else sys.executable

    def draw(self, context: bpy.types.Context) -> None:
        from . import operators

        layout = self.layout
        row = layout.row(align=True)
        row.prop(self, "python_path")
        row.operator("prd.check_environment", text="Check", icon="CHECKMARK")
        if operators.env_check_running():
            layout.label(text="Checking the interpreter...", icon="TIME")
        elif self.check_result:
            box = layout.box()
            for i, line in enumerate(operators.wrap(self.check_result, 90)):
                box.label(text=line, icon=("CHECKMARK" if self.check_ok else "ERROR") if i == 0 else "BLANK1")

        box = layout.box()
        box.label(text="Create Trainer Environment (downloads packages from the internet)", icon="URL")
        box.prop(self, "venv_dir")
        box.prop(self, "base_python")
        box.prop(self, "torch_build")
        box.prop(self, "with_gsplat")
        box.prop(self, "packages")
        box.operator("prd.create_environment", icon="IMPORT")
        if self.install_status:
            for line in operators.wrap(self.install_status, 90):
                box.label(text=line)


CLASSES = (PRD_AddonPreferences,)


def get(context: bpy.types.Context | None = None) -> PRD_AddonPreferences | None:
    """This extension's preferences, or None when it is not enabled as an add-on."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None
