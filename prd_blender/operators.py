"""Operators of the Reconstruct panel and the preferences, and the timers that watch background processes.

Nothing here waits on a process: operators start a ``job`` object and register a ``bpy.app.timers``
callback (``poll_job`` / ``poll_env``) that consumes whatever output is ready and returns at once.
Progress is shown in the panel (bar, iteration, PSNR, time left), deliberately not with
``WindowManager.progress_update``: that turns the mouse cursor into a counter, for the whole run, while
the user keeps working.
"""

from __future__ import annotations

import math
import os
import textwrap
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty

from . import job as jobmod
from . import preferences, properties

POLL_INTERVAL_S = 0.25
# Upper bound of trainer lines handled per timer call, so a burst of output cannot stall the UI.
MAX_LINES_PER_POLL = 200

# One trainer job per Blender session (the trainer uses all cores or the GPU anyway). Kept at module
# level, not in Blender data: undo and file loads replace Blender data, but the process goes on.
_job: jobmod.TrainerJob | None = None
_job_scene = ""
_env_check: jobmod.EnvCheck | None = None
_installer: jobmod.EnvInstaller | None = None


def wrap(text: str, width: int = 40) -> list[str]:
    """Split a message into lines for ``layout.label`` (labels do not wrap)."""
    return textwrap.wrap(text, width) or [""]


def job_running() -> bool:
    return _job is not None and not _job.state.finished


def env_check_running() -> bool:
    return _env_check is not None and not _env_check.finished


def _tag_redraw(space_types: tuple[str, ...] = ("VIEW_3D",)) -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm else ():
        for area in window.screen.areas:
            if area.type in space_types:
                area.tag_redraw()


def _quality(props) -> tuple[int, int | None, int]:
    """(stage-1 iterations, resolution or None, iterations of each stage 2-4) for the chosen quality."""
    if props.quality == "CUSTOM":
        return props.iterations, (props.resolution or None), props.distill_iterations
    return jobmod.QUALITY_PRESETS[props.quality]


def _mesh_settings(props) -> tuple[str, int] | None:
    """(``prd mesh`` quality, texture size) for the chosen quality, or None when no mesh is wanted."""
    if not props.build_mesh:
        return None
    if props.quality == "CUSTOM":
        return props.mesh_quality, int(props.texture_size)
    return jobmod.MESH_PRESETS[props.quality]


def _sync(props, state: jobmod.JobState) -> None:
    """Copy the job state into the scene properties the panel draws."""
    props.status = state.status.upper() if state.status != "starting" else "RUNNING"
    props.message = state.message[:1000]
    props.stage = 5 if state.phase == "mesh" else state.stage  # 5: the panel shows "Mesh"
    props.iteration = state.iteration
    props.total_iterations = state.iterations
    props.psnr = state.psnr
    props.loss = state.loss
    props.eta_s = state.eta_s
    props.gaussians = state.gaussians
    props.backend = state.backend
    props.progress = state.fraction


def poll_job() -> float | None:
    """Timer callback: take in the trainer's output, update the panel; None (stop) once the job ended."""
    job = _job
    if job is None:
        return None
    changed = job.poll(MAX_LINES_PER_POLL)
    if changed:
        scene = bpy.data.scenes.get(_job_scene)
        if scene is not None:
            _sync(scene.prd, job.state)
        _tag_redraw()
    if job.state.finished:
        if changed:
            print(f"prd: job {job.state.status}: {job.state.message}")
            scene = bpy.data.scenes.get(_job_scene)
            if job.state.status == "done" and scene is not None and scene.prd.auto_import:
                _auto_import(scene, job.out)
        return None
    return POLL_INTERVAL_S


def _auto_import(scene: bpy.types.Scene, out: Path) -> None:
    """Bring a finished job's result into the scene it was started from (a timer has no operator context)."""
    from . import importer

    try:
        importer.import_result(scene, out, gaussians=scene.prd.import_gaussians)
    except importer.ImportError_ as exc:
        scene.prd.message = f"{scene.prd.message}; import failed: {exc}"[:1000]
        print(f"prd: import failed: {exc}")
        return
    scene.prd.message = f"{scene.prd.message}; imported"[:1000]
    _tag_redraw()


def _log_dir() -> Path:
    return preferences.user_dir("logs")


def _start(op: bpy.types.Operator, context: bpy.types.Context, resume: bool) -> set[str]:
    global _job, _job_scene
    props = context.scene.prd
    if job_running():
        op.report({"ERROR"}, "A reconstruction is already running: cancel it first")
        return {"CANCELLED"}
    prefs = preferences.get(context)
    python = bpy.path.abspath(prefs.python_path) if prefs and prefs.python_path else ""
    out = props.output_path()
    if not out:
        op.report({"ERROR"}, "Choose an output folder")
        return {"CANCELLED"}
    capture = props.capture_path()
    scene_render = None
    if not resume:
        if problem := properties.source_problem(props.source):
            op.report({"ERROR"}, problem)
            return {"CANCELLED"}
        if not capture and props.source != "SCENE":
            op.report({"ERROR"}, "Choose the capture to reconstruct")
            return {"CANCELLED"}
        if (Path(out) / "manifest.json").is_file() and not props.overwrite:
            op.report({"ERROR"}, f"{out} already holds a reconstruction: press Resume, tick 'Replace Earlier "
                                 "Run', or choose another output folder")
            return {"CANCELLED"}
        if problem := _known_light_problem(props):
            op.report({"ERROR"}, problem)
            return {"CANCELLED"}
        if props.source == "SCENE":
            try:
                capture, scene_render = _prepare_scene_capture(context, props)
            except jobmod.JobError as exc:
                props.status, props.message = "FAILED", str(exc)
                op.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
    # On resume the run keeps its capture and resolution; it trains on to the current quality's iterations.
    iterations, resolution, distill_iterations = _quality(props)
    mesh = _mesh_settings(props)
    # A finished run whose mesh step was cancelled or failed: Resume builds the mesh without training again.
    mesh_only = resume and mesh is not None and jobmod.run_needs_mesh_only(out)
    job = jobmod.TrainerJob(python, capture, out, iterations=iterations, resolution=resolution,
                            device=props.device, resume=resume, overwrite=props.overwrite, log_dir=_log_dir(),
                            distill_iterations=distill_iterations, mesh=mesh, mesh_only=mesh_only,
                            scene_render=scene_render, light=_known_light(props), dielectric=props.dielectric,
                            blender=bpy.app.binary_path or None)
    try:
        job.start()
    except jobmod.JobError as exc:
        props.status, props.message = "FAILED", str(exc)
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    _job, _job_scene = job, context.scene.name
    props.log_path = str(job.log_path)
    props.result_dir = out
    _sync(props, job.state)
    if not bpy.app.timers.is_registered(poll_job):
        # persistent: keep watching the process when the user loads another .blend file.
        bpy.app.timers.register(poll_job, first_interval=POLL_INTERVAL_S, persistent=True)
    op.report({"INFO"}, ("Resuming" if resume else "Started") + f" the reconstruction into {out}")
    return {"FINISHED"}


def _known_light(props) -> tuple[str, float] | None:
    """(HDRI path, rotation in degrees) for the trainer's --light, or None."""
    if not props.use_known_light:
        return None
    return bpy.path.abspath(props.known_light_path), math.degrees(props.known_light_rotation)


def _known_light_problem(props) -> str:
    """Why the Known Lighting settings cannot start a run ("" when they can); the trainer checks the file's
    contents too, before it trains."""
    light = _known_light(props)
    if light is None:
        return ""
    if _quality(props)[2] == 0:
        return "Known Lighting needs the material stages: raise Material Iterations above 0"
    path = light[0]
    if not props.known_light_path or not os.path.isfile(path):
        return f"Known Lighting: choose the capture's HDRI (not found: {path or 'no file chosen'})"
    if not path.lower().endswith((".hdr", ".exr")):
        return f"Known Lighting: {os.path.basename(path)} is not an .hdr or .exr file"
    return ""


# Cycles samples of the scene-camera renders per quality (the trainer sees them at the preset's size).
SCENE_SAMPLES = {"PREVIEW": 32, "STANDARD": 64, "HIGH": 128, "CUSTOM": 64}


def _prepare_scene_capture(context: bpy.types.Context, props) -> tuple[str, list[str]]:
    """For the Scene Cameras source: save a copy of the scene beside where its capture goes and return
    (capture folder, argv of the process that renders it). Raises JobError with a message for the user."""
    import shutil
    import sys

    cams = [o for o in context.scene.objects if o.type == "CAMERA" and o.data.type == "PERSP"]
    if len(cams) < 2:
        raise jobmod.JobError(f"The scene has {len(cams)} perspective camera(s): add cameras around the object "
                              "(at least 2, better 30 or more) to reconstruct from them")
    if not props.output_path():
        raise jobmod.JobError("Choose an output folder")
    dest = Path(props.scene_capture_path())
    if dest.exists() and any(dest.iterdir()):
        ours = (dest / "transforms.json").is_file() and '"prd_scene_capture": true' in (
            dest / "transforms.json").read_text(encoding="utf-8", errors="replace")[:200]
        if not (ours and props.overwrite):
            raise jobmod.JobError(f"{dest} already exists: tick 'Replace Earlier Run' to render it again, or choose "
                                  "another output folder" if ours else f"{dest} exists and is not a scene capture: "
                                  "move it away or choose another output folder")
        shutil.rmtree(dest)  # our own earlier capture, and the user asked to replace it
    dest.mkdir(parents=True)
    blend = dest / "scene.blend"
    # A copy: the user's file (saved or not) stays as it is; relative texture paths are remapped.
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True, check_existing=False, relative_remap=True)
    script = str(Path(__file__).with_name("scene_render.py"))
    iterations, resolution, _ = _quality(props)
    opts = ["--samples", str(SCENE_SAMPLES.get(props.quality, 64)), "--max-size", str(resolution or 0)]
    if bpy.app.binary_path:  # real Blender: its own executable, in the background
        argv = [bpy.app.binary_path, "-b", str(blend), "--python", script, "--", str(dest), *opts]
    else:  # Blender as a Python module: the same interpreter imports bpy
        argv = [sys.executable, script, str(dest), "--blend", str(blend), *opts]
    return str(dest / "transforms.json"), argv


class PRD_OT_start(bpy.types.Operator):
    """Start reconstructing the capture in a background trainer process"""

    bl_idname = "prd.start"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if job_running():
            cls.poll_message_set("A reconstruction is already running")
            return False
        props = getattr(context.scene, "prd", None)
        if props is None:
            return False
        if problem := properties.source_problem(props.source):
            cls.poll_message_set(problem)
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        return _start(self, context, resume=False)


class PRD_OT_resume(bpy.types.Operator):
    """Continue the run in the output folder from its last checkpoint"""

    bl_idname = "prd.resume"
    bl_label = "Resume"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if job_running():
            cls.poll_message_set("A reconstruction is already running")
            return False
        props = getattr(context.scene, "prd", None)
        out = props.output_path() if props else ""
        if not out or not (Path(out) / "checkpoint.pt").is_file():
            cls.poll_message_set("The output folder has no checkpoint to resume from")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        return _start(self, context, resume=True)


class PRD_OT_cancel(bpy.types.Operator):
    """Stop the running reconstruction (it saves a checkpoint first; press again to kill it at once)"""

    bl_idname = "prd.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not job_running():
            cls.poll_message_set("No reconstruction is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        kill = _job.cancel_requested_at > 0
        _job.cancel()
        scene = bpy.data.scenes.get(_job_scene)
        if scene is not None:
            _sync(scene.prd, _job.state)
        _tag_redraw()
        if kill:
            self.report({"WARNING"}, "Killing the trainer")
        else:
            self.report({"INFO"}, _job.state.message)  # "Cancelling: writing a checkpoint" / "... the mesh step"
        return {"FINISHED"}


class PRD_OT_open_log(bpy.types.Operator):
    """Open the log of the last job (trainer output and errors) in Blender's Text Editor"""

    bl_idname = "prd.open_log"
    bl_label = "Open Log"

    external: BoolProperty(name="External", default=False, description="Open in the system's text viewer instead")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        props = getattr(context.scene, "prd", None)
        if not props or not props.log_path or not Path(props.log_path).is_file():
            cls.poll_message_set("No log yet: start a reconstruction first")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = context.scene.prd.log_path
        if self.external:
            return bpy.ops.wm.path_open(filepath=path)
        name = "PRD Log"
        text = bpy.data.texts.get(name) or bpy.data.texts.new(name)
        # Read a snapshot (the file may still be growing); the text is replaced on every open.
        text.from_string(Path(path).read_text(encoding="utf-8", errors="replace"))
        shown = False
        for area in context.screen.areas if context.screen else ():
            if area.type == "TEXT_EDITOR":
                area.spaces.active.text = text
                shown = True
        self.report({"INFO"}, f"Log loaded as text '{name}'" + ("" if shown else " (open it in a Text Editor)"))
        return {"FINISHED"}


class PRD_OT_import_result(bpy.types.Operator):
    """Import the reconstruction into the scene: the mesh with its PBR material, the recovered World, the
    cameras and (optionally) the Gaussians as a point preview"""

    bl_idname = "prd.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH", description="Output folder (default: the panel's)")
    cameras: BoolProperty(name="Cameras", default=True)
    gaussians: BoolProperty(name="Gaussians Preview", default=True)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if job_running():
            cls.poll_message_set("Wait for the reconstruction to finish")
            return False
        return context.scene is not None

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        self.gaussians = context.scene.prd.import_gaussians
        return self.execute(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        from . import importer

        folder = bpy.path.abspath(self.directory) if self.directory else context.scene.prd.output_path()
        if not folder:
            self.report({"ERROR"}, "Choose the output folder of a reconstruction")
            return {"CANCELLED"}
        try:
            made = importer.import_result(context.scene, folder, cameras=self.cameras, gaussians=self.gaussians)
        except importer.ImportError_ as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        parts = []
        if made["mesh"]:
            parts.append(f"a mesh of {len(made['mesh'].data.polygons):,} faces")
        parts.append(f"{len(made['cameras'])} cameras")
        if made["gaussians"]:
            parts.append(f"{len(made['gaussians'].data.vertices):,} Gaussians (hidden preview)" if made["mesh"]
                         else f"{len(made['gaussians'].data.vertices):,} Gaussians")
        if made["world"]:
            parts.append("the recovered World")
        self.report({"INFO"}, "Imported " + ", ".join(parts))
        return {"FINISHED"}


# --- preferences: check / create the trainer environment ----------------------------------------------


def poll_env() -> float | None:
    """Timer callback for the environment check and installer; writes their results into the preferences."""
    global _env_check, _installer
    prefs = preferences.get()
    again = False
    if _env_check is not None:
        if _env_check.poll():
            if _env_check.result is not None:
                ok, text = jobmod.summarize_check(_env_check.result)
            else:
                ok, text = False, _env_check.error
            if prefs:
                prefs.check_ok, prefs.check_result = ok, text
            print(f"prd: environment check: {text}")
            _env_check = None
        else:
            again = True
    if _installer is not None:
        finished = _installer.poll()
        if prefs:
            prefs.install_status = ("Failed: " + _installer.error if _installer.error else
                                    "Done" if _installer.done else "Installing, " + _installer.progress_text)
        if finished:
            if _installer.done and prefs:
                # Point the extension at the new environment and check it.
                prefs.python_path = str(jobmod.venv_python(prefs.resolved_venv_dir()))
                _start_check(prefs.python_path)
                again = True
            _installer = None
        else:
            again = True
    _tag_redraw(("PREFERENCES", "VIEW_3D"))
    return POLL_INTERVAL_S if again else None


def _start_check(python: str) -> str:
    """Start an environment check; returns an error message or ''."""
    global _env_check
    check = jobmod.EnvCheck(python)
    try:
        check.start()
    except jobmod.JobError as exc:
        return str(exc)
    _env_check = check
    if not bpy.app.timers.is_registered(poll_env):
        bpy.app.timers.register(poll_env, first_interval=POLL_INTERVAL_S, persistent=True)
    return ""


class PRD_OT_check_environment(bpy.types.Operator):
    """Run the trainer Python and report its torch, CUDA, gsplat and numba versions"""

    bl_idname = "prd.check_environment"
    bl_label = "Check Trainer Environment"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if env_check_running():
            cls.poll_message_set("A check is already running")
            return False
        return preferences.get(context) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = preferences.get(context)
        python = bpy.path.abspath(prefs.python_path) if prefs.python_path else ""
        if err := _start_check(python):
            prefs.check_ok, prefs.check_result = False, err
            self.report({"ERROR"}, err)
            return {"CANCELLED"}
        prefs.check_result = ""
        self.report({"INFO"}, "Checking the trainer Python (runs in the background)")
        return {"FINISHED"}


class PRD_OT_create_environment(bpy.types.Operator):
    """Create a Python environment for the trainer and install torch and the other packages into it.
    This downloads several hundred MB to a few GB from the internet (PyPI, download.pytorch.org)"""

    bl_idname = "prd.create_environment"
    bl_label = "Create Trainer Environment"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if _installer is not None:
            cls.poll_message_set("An installation is already running")
            return False
        return preferences.get(context) is not None

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        # The only network access of the extension, so always ask first.
        prefs = preferences.get(context)
        return context.window_manager.invoke_confirm(
            self, event, title="Download and install the trainer environment?",
            message=f"Creates {prefs.resolved_venv_dir()} and downloads torch and other packages from the internet",
            confirm_text="Install",
        )

    def execute(self, context: bpy.types.Context) -> set[str]:
        global _installer
        prefs = preferences.get(context)
        if not bpy.app.online_access and prefs.packages.strip():
            self.report({"ERROR"}, "Online access is disabled in Preferences > System > Network: allow it to "
                                   "download the trainer's packages")
            return {"CANCELLED"}
        venv = prefs.resolved_venv_dir()
        packages = prefs.packages.split() + (["gsplat"] if prefs.with_gsplat else [])
        steps = jobmod.install_steps(prefs.resolved_base_python(), venv, packages,
                                     preferences.TORCH_INDEX[prefs.torch_build])
        installer = jobmod.EnvInstaller(steps, log_path=_log_dir() / f"install-{time.strftime('%Y%m%d-%H%M%S')}.log")
        try:
            installer.start()
        except jobmod.JobError as exc:
            prefs.install_status = f"Failed: {exc}"
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _installer = installer
        prefs.install_status = "Installing, " + installer.progress_text
        if not bpy.app.timers.is_registered(poll_env):
            bpy.app.timers.register(poll_env, first_interval=POLL_INTERVAL_S, persistent=True)
        self.report({"INFO"}, f"Creating the trainer environment in {venv} (runs in the background)")
        return {"FINISHED"}


CLASSES = (
    PRD_OT_start, PRD_OT_resume, PRD_OT_cancel, PRD_OT_open_log, PRD_OT_import_result,
    PRD_OT_check_environment, PRD_OT_create_environment,
)


def cancel_on_exit() -> None:
    """atexit hook: when Blender quits, let a running trainer checkpoint instead of dying on a broken pipe."""
    if job_running():
        _job.cancel()


def unregister() -> None:
    """Stop the timers. A running trainer is cancelled (it checkpoints) rather than left orphaned."""
    global _installer
    for fn in (poll_job, poll_env):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    if job_running():
        _job.cancel()
    if _installer is not None:
        _installer.cancel()
        _installer = None
