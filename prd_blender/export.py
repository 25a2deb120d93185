"""Export the reconstructed mesh as a .glb through Blender's own glTF exporter, with the recovered
environment written beside it as an EXR (glTF has no standard environment light; DESIGN.md §1.5).

Going through Blender's exporter (not copying the trainer's mesh.glb) means what is exported is what the
user sees and may have edited: the object's transform, modifiers and material.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy_extras.io_utils import ExportHelper


class ExportError_(ValueError):
    """The export cannot be done; the message is for the user."""


def find_mesh_object(scene: bpy.types.Scene) -> bpy.types.Object | None:
    """The reconstructed mesh: the panel's (the last import), else the active object if it is one of ours."""
    props = getattr(scene, "prd", None)
    if props is not None and props.mesh_object is not None and props.mesh_object.name in scene.objects:
        return props.mesh_object
    active = bpy.context.view_layer.objects.active if bpy.context.scene == scene else None
    if active is not None and active.get("prd_role") == "mesh":
        return active
    return None


def environment_of(obj: bpy.types.Object, scene: bpy.types.Scene) -> Path | None:
    """The recovered environment EXR belonging to ``obj``'s run (or the recovered World's image)."""
    run = obj.get("prd_run")
    if run and (Path(run) / "environment.exr").is_file():
        return Path(run) / "environment.exr"
    world = getattr(scene, "prd", None) and scene.prd.recovered_world
    path = world.get("prd_environment") if world else None
    return Path(path) if path and Path(path).is_file() else None


def _ensure_gltf() -> None:
    if not hasattr(bpy.ops.export_scene, "gltf"):
        import addon_utils

        addon_utils.enable("io_scene_gltf2", default_set=True)
    if not hasattr(bpy.ops.export_scene, "gltf"):
        raise ExportError_("Blender's glTF 2.0 add-on (io_scene_gltf2) is not available: enable it in Preferences")


def export_glb(scene: bpy.types.Scene, obj: bpy.types.Object, filepath: str | Path, environment: bool = True,
               overwrite: bool = False) -> tuple[Path, Path | None]:
    """Write ``obj`` (with its material and textures) to ``filepath`` (.glb) and, when ``environment``, the
    recovered environment to ``<stem>_environment.exr`` beside it. Existing files are an error unless
    ``overwrite``: both names are checked before anything is written."""
    path = Path(filepath)
    if path.suffix.lower() != ".glb":
        path = path.with_suffix(".glb")
    env_src = environment_of(obj, scene) if environment else None
    env_dst = path.with_name(f"{path.stem}_environment.exr") if env_src else None
    if not overwrite:
        taken = [p for p in (path, env_dst) if p is not None and p.exists()]
        if taken:
            raise ExportError_(f"{', '.join(p.name for p in taken)} already exist(s) in {path.parent}: choose "
                               "another name or tick 'Replace Existing Files'")
    if obj.type != "MESH":
        raise ExportError_(f"{obj.name} is not a mesh")
    _ensure_gltf()
    path.parent.mkdir(parents=True, exist_ok=True)
    view_layer = bpy.context.view_layer
    # The exporter works on the selection: select only the mesh, then give the user their selection back.
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    hidden = obj.hide_get()
    try:
        for o in selected:
            o.select_set(False)
        obj.hide_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        result = bpy.ops.export_scene.gltf(
            filepath=str(path), export_format="GLB", use_selection=True, export_apply=True, export_yup=True,
            # Tangents as Blender computed them for the Normal Map node, so viewers use the same frame.
            export_tangents=True, export_cameras=False, export_lights=False, export_image_format="AUTO",
        )
    finally:
        obj.select_set(False)
        obj.hide_set(hidden)
        for o in selected:
            o.select_set(True)
        view_layer.objects.active = active
    if result != {"FINISHED"} or not path.is_file():
        raise ExportError_(f"The glTF exporter did not write {path} (see the console)")
    if env_src is not None and env_dst is not None:
        shutil.copyfile(env_src, env_dst)
    return path, env_dst


class PRD_OT_export_glb(bpy.types.Operator, ExportHelper):
    """Export the reconstructed mesh and its PBR textures as glTF binary (.glb), with the recovered
    environment as an EXR beside it"""

    bl_idname = "prd.export_glb"
    bl_label = "Export glTF"
    bl_options = {"REGISTER"}

    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})
    environment: BoolProperty(name="Environment EXR", default=True,
                              description="Also write the recovered environment map as <name>_environment.exr")
    overwrite: BoolProperty(name="Replace Existing Files", default=False, options={"SKIP_SAVE"},
                            description="Replace a .glb / .exr of the same name (otherwise the export refuses)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None or find_mesh_object(context.scene) is None:
            cls.poll_message_set("No reconstructed mesh in the scene: import a result with a mesh first")
            return False
        return True

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if not self.filepath:
            obj = find_mesh_object(context.scene)
            run = obj.get("prd_run") if obj else ""
            self.filepath = str(Path(run) / "asset.glb") if run else "asset.glb"
        return ExportHelper.invoke(self, context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = find_mesh_object(context.scene)
        if obj is None:
            self.report({"ERROR"}, "No reconstructed mesh in the scene")
            return {"CANCELLED"}
        try:
            glb, exr = export_glb(context.scene, obj, bpy.path.abspath(self.filepath), self.environment,
                                  self.overwrite)
        except ExportError_ as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {glb}" + (f" and {exr.name}" if exr else ""))
        return {"FINISHED"}


CLASSES = (PRD_OT_export_glb,)
