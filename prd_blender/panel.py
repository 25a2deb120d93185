"""The Reconstruct tab of the 3D View sidebar (N-panel)."""

from __future__ import annotations

from pathlib import Path

import bpy

from . import operators, properties

STATUS_ICONS = {
    "IDLE": "INFO", "RUNNING": "PLAY", "CANCELLING": "PAUSE", "DONE": "CHECKMARK", "PAUSED": "PAUSE",
    "CANCELLED": "CANCEL", "FAILED": "ERROR",
}


def format_seconds(s: float) -> str:
    if s < 0:
        return "--"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _labels(layout: bpy.types.UILayout, text: str, context: bpy.types.Context, icon: str = "NONE") -> None:
    # Labels do not wrap: split by the sidebar's width (about 7 px per character).
    width = max(20, int((context.region.width if context.region else 300) / 7))
    for i, line in enumerate(operators.wrap(text, width)):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1" if icon != "NONE" else "NONE")


class PRD_PT_reconstruct(bpy.types.Panel):
    bl_idname = "PRD_PT_reconstruct"
    bl_label = "Reconstruct"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.prd
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        running = operators.job_running()

        col = layout.column()
        col.enabled = not running
        col.prop(props, "source")
        path_prop = {"COLMAP": "colmap_path", "TRANSFORMS": "transforms_path", "PHOTOS": "photos_path"}.get(
            props.source)
        if path_prop:
            col.prop(props, path_prop, text="Capture")
        elif props.source == "SCENE":
            _labels(col, "Every perspective camera is rendered with Cycles into "
                         f"{Path(props.scene_capture_path()).name or '<output>_scene_capture'}, beside the output",
                    context, icon="CAMERA_DATA")
        if problem := properties.source_problem(props.source):
            _labels(col.box(), problem, context, icon="ERROR")
        col.prop(props, "output_dir")
        out = props.output_path()
        if out and (Path(out) / "manifest.json").is_file():
            col.prop(props, "overwrite")
        col.prop(props, "quality")
        if props.quality == "CUSTOM":
            col.prop(props, "iterations")
            col.prop(props, "distill_iterations")
            col.prop(props, "resolution")
        col.prop(props, "device")
        col.prop(props, "use_known_light")
        if props.use_known_light:
            col.prop(props, "known_light_path")
            col.prop(props, "known_light_rotation")
        col.prop(props, "dielectric")
        col.prop(props, "build_mesh")
        if props.build_mesh and props.quality == "CUSTOM":
            col.prop(props, "mesh_quality")
            col.prop(props, "texture_size")

        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("prd.start", icon="PLAY")
        row.operator("prd.resume", icon="FILE_REFRESH", text="Resume")
        row.operator("prd.cancel", icon="CANCEL", text="Cancel")

        box = layout.box()
        _labels(box, f"{props.bl_rna.properties['status'].enum_items[props.status].name}"
                     + (f": {props.message}" if props.message else ""), context, STATUS_ICONS.get(props.status, "NONE"))
        if props.status in ("RUNNING", "CANCELLING") or props.iteration:
            grid = box.grid_flow(row_major=True, columns=2, even_columns=True, align=True)
            stage = {0: "Preparing", 5: "Mesh"}.get(props.stage, f"Stage {props.stage}")
            grid.label(text=stage + (f" ({props.backend.upper()})" if props.backend else ""))
            grid.label(text=f"Iteration {props.iteration}/{props.total_iterations}")
            grid.label(text=f"PSNR {props.psnr:.2f} dB")
            grid.label(text=f"Time left {format_seconds(props.eta_s)}")
            grid.label(text=f"Gaussians {props.gaussians:,}")
            grid.label(text=f"Loss {props.loss:.4f}")
            if hasattr(box, "progress"):
                box.progress(factor=props.progress, type="BAR", text=f"{props.progress * 100:.0f}%")
        row = box.row(align=True)
        row.operator("prd.open_log", icon="TEXT")
        row.operator("prd.open_log", icon="FILE_FOLDER", text="").external = True

        box = layout.box()
        box.label(text="Result", icon="IMPORT")
        box.prop(props, "auto_import")
        box.prop(props, "import_gaussians")
        box.operator("prd.import_result", icon="OUTLINER_OB_CAMERA")


class PRD_PT_relight(bpy.types.Panel):
    bl_idname = "PRD_PT_relight"
    bl_label = "Relight"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"
    bl_parent_id = "PRD_PT_reconstruct"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.prd
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column()
        col.prop(props, "light_source", expand=True)
        col.prop(props, "studio_light" if props.light_source == "STUDIO" else "hdri_path")
        col.prop(props, "light_rotation")
        col.prop(props, "light_strength")
        row = layout.row(align=True)
        row.operator("prd.relight_world", icon="WORLD")
        row.operator("prd.recovered_world", icon="LOOP_BACK")
        col = layout.column()
        col.prop(props, "render_samples")
        col.prop(props, "render_path")
        row = layout.row()
        row.scale_y = 1.3
        row.operator("prd.relight_render", icon="RENDER_STILL")
        if props.last_render:
            _labels(layout, f"Last: {props.last_render}", context, icon="IMAGE_DATA")


class PRD_PT_export(bpy.types.Panel):
    bl_idname = "PRD_PT_export"
    bl_label = "Export"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"
    bl_parent_id = "PRD_PT_reconstruct"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.prd
        layout = self.layout
        layout.prop(props, "mesh_object")
        layout.operator("prd.export_glb", icon="EXPORT")


CLASSES = (PRD_PT_reconstruct, PRD_PT_relight, PRD_PT_export)
