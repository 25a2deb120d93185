"""Relight: show the reconstruction under another HDRI (a file, or one of Blender's bundled studio lights),
render a still with Cycles, and switch back to the recovered environment.

The relit World is one data-block ("PRD Relight") updated in place, so trying ten HDRIs does not leave ten
Worlds behind; the recovered World keeps a fake user (importer.import_world) so it is never lost.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from . import importer, properties

RELIGHT_WORLD = "PRD Relight"


class RelightError(ValueError):
    """The relight settings cannot be used; the message is for the user."""


def chosen_hdri(props) -> Path:
    """The HDRI the panel points at: a bundled studio light or a file; raises RelightError when unusable."""
    if props.light_source == "STUDIO":
        path = properties.studio_lights().get(props.studio_light)
        if not path:
            raise RelightError("No bundled HDRI chosen (this Blender has none under datafiles/studiolights/world)")
        return Path(path)
    if not props.hdri_path:
        raise RelightError("Choose an HDRI file (.hdr or .exr)")
    path = Path(bpy.path.abspath(props.hdri_path))
    if not path.is_file():
        raise RelightError(f"HDRI not found: {path}")
    if path.suffix.lower() not in (".hdr", ".exr"):
        raise RelightError(f"{path.name} is not an HDRI: use an equirectangular .hdr or .exr")
    return path


def set_world(scene: bpy.types.Scene, hdri: str | Path, rotation: float = 0.0,
              strength: float = 1.0) -> bpy.types.World:
    """Make ``scene`` use ``hdri`` (rotation in radians about Z) through the shared "PRD Relight" World."""
    hdri = Path(hdri)
    world = bpy.data.worlds.get(RELIGHT_WORLD) or bpy.data.worlds.new(RELIGHT_WORLD)
    importer.environment_nodes(world, hdri, strength, math.degrees(rotation))
    world["prd_hdri"] = str(hdri)
    scene.world = world
    return world


def unique_path(path: str | Path) -> Path:
    """``path`` if it does not exist, else the first free ``<stem>_001<suffix>``, ``_002`` ...: a render
    never replaces an earlier one silently."""
    path = Path(path)
    if not path.exists():
        return path
    stem = re.sub(r"_\d{3}$", "", path.stem)
    for i in range(1, 10_000):
        candidate = path.with_name(f"{stem}_{i:03d}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise RelightError(f"Too many renders named {stem}_NNN{path.suffix} in {path.parent}")


def default_render_path(props, hdri: Path) -> Path:
    """Where a relit still goes when the panel names no file: <output folder>/relight/<hdri>_<deg>deg.png."""
    if props.render_path:
        path = Path(bpy.path.abspath(props.render_path))
        if props.render_path.endswith(("/", "\\")) or path.is_dir():
            return path / f"{hdri.stem}_{round(math.degrees(props.light_rotation))}deg.png"
        return path if path.suffix.lower() == ".png" else path.with_suffix(".png")
    base = props.result_dir or props.output_dir
    if not base:
        raise RelightError("Choose where to save the render (Render To), or set the output folder of a run")
    return Path(bpy.path.abspath(base)) / "relight" / f"{hdri.stem}_{round(math.degrees(props.light_rotation))}deg.png"


class StillRender:
    """One relit still: switches the scene to Cycles with the given samples and PNG output, and on
    ``finish`` saves "Render Result" to a free file name and gives the user's settings back.

    Used both ways a still is rendered: blocking (``render_still``; headless, scripts, tests) and as
    Blender's render job (the operator's invoke: progress in the render window, Esc cancels, the UI keeps
    running), where ``finish`` / ``abort`` run from the render_complete / render_cancel handlers.
    """

    def __init__(self, scene: bpy.types.Scene, filepath: str | Path, samples: int = 64):
        if scene.camera is None:
            raise RelightError("The scene has no camera: import a result (its cameras) or add a camera")
        self.scene_name = scene.name
        self.path = unique_path(filepath)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        r = scene.render
        fmt = r.image_settings
        self._saved = (r.engine, scene.cycles.samples, fmt.file_format, fmt.color_mode, fmt.color_depth)
        r.engine = "CYCLES"
        scene.cycles.samples = int(samples)
        fmt.file_format = "PNG"
        fmt.color_mode = "RGBA" if r.film_transparent else "RGB"
        fmt.color_depth = "8"

    def restore(self) -> None:
        scene = bpy.data.scenes.get(self.scene_name)
        if scene is None:
            return
        r, fmt = scene.render, scene.render.image_settings
        r.engine, scene.cycles.samples = self._saved[0], self._saved[1]
        fmt.file_format, fmt.color_mode, fmt.color_depth = self._saved[2], self._saved[3], self._saved[4]

    def finish(self) -> Path:
        """Save the finished render, restore the settings; returns the file written."""
        try:
            result = bpy.data.images.get("Render Result")
            if result is None:
                raise RelightError("Cycles produced no image (see the console)")
            scene = bpy.data.scenes.get(self.scene_name)
            result.save_render(str(self.path), scene=scene)
            if hasattr(scene, "prd"):
                scene.prd.last_render = str(self.path)
        finally:
            self.restore()
        return self.path


def render_still(scene: bpy.types.Scene, filepath: str | Path, samples: int = 64) -> Path:
    """Render ``scene`` from its camera with Cycles and save a PNG at ``filepath`` (or a numbered name
    beside it when taken). Blocking, like F12 waiting for the result; the scene's render engine, samples
    and output format are restored afterwards so the user's settings are not changed by a preview."""
    job = StillRender(scene, filepath, samples)
    try:
        bpy.ops.render.render(write_still=False, scene=scene.name)
    except BaseException:
        job.restore()
        raise
    return job.finish()


# The still being rendered by Blender's render job (one at a time, like F12), and its handlers.
_pending: StillRender | None = None


def _clear_handlers() -> None:
    for handlers, fn in ((bpy.app.handlers.render_complete, _on_render_complete),
                         (bpy.app.handlers.render_cancel, _on_render_cancel)):
        while fn in handlers:
            handlers.remove(fn)


def _on_render_complete(*_args) -> None:
    global _pending
    job, _pending = _pending, None
    _clear_handlers()
    if job is not None:
        try:
            path = job.finish()
            print(f"prd: relit still saved to {path}")
        except (RelightError, RuntimeError) as exc:
            print(f"prd: relit still not saved: {exc}")


def _on_render_cancel(*_args) -> None:
    global _pending
    job, _pending = _pending, None
    _clear_handlers()
    if job is not None:
        job.restore()


class PRD_OT_relight_world(bpy.types.Operator):
    """Light the scene with the chosen HDRI (the recovered environment stays available to switch back)"""

    bl_idname = "prd.relight_world"
    bl_label = "Set World"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        props = context.scene.prd
        try:
            hdri = chosen_hdri(props)
        except RelightError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        set_world(context.scene, hdri, props.light_rotation, props.light_strength)
        self.report({"INFO"}, f"World: {hdri.name}")
        return {"FINISHED"}


class PRD_OT_relight_render(bpy.types.Operator):
    """Set the chosen HDRI as World and render a still with Cycles from the scene camera into a PNG
    (never replacing an earlier render)"""

    bl_idname = "prd.relight_render"
    bl_label = "Render Relit Still"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="File", subtype="FILE_PATH", options={"SKIP_SAVE"},
                             description="PNG to write (default: the panel's Render To)")
    samples: IntProperty(name="Samples", default=0, min=0, options={"SKIP_SAVE"},
                         description="Cycles samples (0: the panel's)")
    keep_world: BoolProperty(name="Keep Current World", default=False, options={"SKIP_SAVE"},
                             description="Render with the scene's current World instead of the chosen HDRI")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None or context.scene.camera is None:
            cls.poll_message_set("The scene has no camera")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = context.scene
        props = scene.prd
        try:
            if self.keep_world:
                hdri = Path(scene.world.get("prd_hdri") or scene.world.get("prd_environment") or "world") \
                    if scene.world else Path("world")
            else:
                hdri = chosen_hdri(props)
                set_world(scene, hdri, props.light_rotation, props.light_strength)
            path = Path(bpy.path.abspath(self.filepath)) if self.filepath else default_render_path(props, hdri)
            if self._use_render_job:
                return self._start_render_job(scene, path, self.samples or props.render_samples)
            written = render_still(scene, path, self.samples or props.render_samples)
        except RelightError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        props.last_render = str(written)
        self.report({"INFO"}, f"Rendered {written}" + ("" if written == path else f" ({path.name} exists)"))
        return {"FINISHED"}

    _use_render_job = False

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        # From the UI: Blender's render job (render window with progress, Esc cancels, UI stays live).
        # Headless there is no window to run it in, so the blocking path is used.
        self._use_render_job = not bpy.app.background and context.window is not None
        return self.execute(context)

    def _start_render_job(self, scene: bpy.types.Scene, path: Path, samples: int) -> set[str]:
        global _pending
        if bpy.app.is_job_running("RENDER"):
            self.report({"ERROR"}, "A render is already running")
            return {"CANCELLED"}
        if _pending is not None:  # an earlier render ended without either handler (e.g. it failed): let go
            _on_render_cancel()
        job = StillRender(scene, path, samples)
        _pending = job
        bpy.app.handlers.render_complete.append(_on_render_complete)
        bpy.app.handlers.render_cancel.append(_on_render_cancel)
        result = bpy.ops.render.render("INVOKE_DEFAULT", write_still=False)
        if "RUNNING_MODAL" not in result and "FINISHED" not in result:
            _on_render_cancel()
            self.report({"ERROR"}, "Blender did not start the render")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Rendering; the still will be saved to {job.path}")
        return {"FINISHED"}


class PRD_OT_recovered_world(bpy.types.Operator):
    """Switch the World back to the environment recovered by the reconstruction"""

    bl_idname = "prd.recovered_world"
    bl_label = "Recovered Light"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        props = getattr(context.scene, "prd", None)
        if props is None or props.recovered_world is None:
            cls.poll_message_set("No recovered environment imported yet")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.world = context.scene.prd.recovered_world
        self.report({"INFO"}, f"World: {context.scene.world.name}")
        return {"FINISHED"}


CLASSES = (PRD_OT_relight_world, PRD_OT_relight_render, PRD_OT_recovered_world)


def unregister() -> None:
    global _pending
    if _pending is not None:
        _pending.restore()
        _pending = None
    _clear_handlers()
