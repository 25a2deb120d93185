"""Background processes for the Blender side: the trainer job, the environment check and installer.

Pure Python (no ``bpy``) so it can be unit-tested and so that nothing here can touch Blender data from
a worker thread. The Blender operators start these objects and poll them from ``bpy.app.timers``:
every method the main thread calls returns at once (reader threads do all blocking I/O).

Protocol with the trainer: docs/handoff.md (JSON lines on stdout, exit codes 0/2/3/1).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# The folder that holds the ``prd_blender`` package (the repository, or Blender's extension repository
# folder once installed, where the extension's folder is named after its id ``prd_blender``). Putting it
# on PYTHONPATH makes the trainer process import the trainer shipped with this very extension.
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_PARENT = PACKAGE_DIR.parent

# quality -> (stage-1 iterations, longer image side or None for full size, iterations of each of stages 2-4)
# High's longer stages 2-4 buy material and geometry, not relighting: at 128 px, 3 x 3000 against 3 x 1000 gave
# normals 6.19 -> 5.91 deg, albedo +0.22 dB and novel views +1.0 dB on the mean of three objects, but relighting
# -0.27 dB, all of it the diffuse object's light drifting in stage 3 (relighting runs 33-34; holding the light in
# stage 4 does not help).
QUALITY_PRESETS: dict[str, tuple[int, int | None, int]] = {
    "PREVIEW": (2_000, 256, 300),
    "STANDARD": (7_000, 512, 1_000),
    "HIGH": (30_000, None, 3_000),
}

# quality -> (``prd mesh --quality``, ``--texture-size``): the mesh follows the training quality, since a
# 300k-face mesh with 2k textures is wasted on a 256 px preview run (and takes minutes to bake on a CPU).
MESH_PRESETS: dict[str, tuple[str, int]] = {
    "PREVIEW": ("preview", 512),
    "STANDARD": ("standard", 1024),
    "HIGH": ("high", 2048),
}
# Rough CPU seconds of ``prd mesh`` per quality (measured: preview 40-70 s on 2 cores at 512 px textures).
# The mesher reports no progress of its own; the panel's bar advances by elapsed time against this estimate
# and never claims to be finished before the process is.
MESH_EXPECTED_S = {"preview": 60.0, "standard": 180.0, "high": 600.0}
# Share of the progress bar given to training when a mesh is built after it.
TRAIN_SHARE = 0.9

# Exit codes of ``prd train`` (prd_blender/trainer/cli.py).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3

# A cancelled trainer writes a checkpoint before it exits; past this it is killed outright.
CANCEL_GRACE_S = 60.0

# The Blender-side log of a job, copied into the output folder when the run ends (see TrainerJob.finish).
JOB_LOG_NAME = "prd_blender.log"


class JobError(RuntimeError):
    """A job could not be started; the message is meant for the user."""


def trainer_env(extra_pythonpath: Path | None = None) -> dict[str, str]:
    """Environment for a trainer-side process started from Blender.

    Blender may set PYTHONHOME/PYTHONPATH for its own bundled Python; inherited, they would make a
    venv interpreter load Blender's standard library. UTF-8 I/O keeps non-ASCII paths in messages intact.
    """
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    parts = [str(extra_pythonpath or PACKAGE_PARENT)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def check_interpreter(python: str) -> str:
    """Return the interpreter path to use, or raise JobError saying what is wrong with it."""
    if not python or not python.strip():
        raise JobError(
            "No trainer Python is set: choose one in Preferences > Add-ons > PRD (Trainer Python), "
            "or press 'Create Trainer Environment' there"
        )
    python = python.strip()
    found = shutil.which(python) if not os.path.dirname(python) else python
    if not found or not os.path.isfile(found):
        raise JobError(f"Trainer Python not found: {python!r}. Set its path in the add-on preferences")
    if not os.access(found, os.X_OK):
        raise JobError(f"Trainer Python is not executable: {python!r}")
    return found


class BackgroundProcess:
    """A subprocess whose stdout and stderr lines are read by threads into one queue.

    The main thread only calls ``drain`` / ``returncode`` / ``terminate``, which never block. Every
    line also goes to ``log_path`` (when given) so the user can read the whole output later.
    """

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 log_path: Path | None = None):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = str(cwd) if cwd else None
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.lines: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self._threads: list[threading.Thread] = []
        self._log = None
        self._log_lock = threading.Lock()
        self.started_at = 0.0

    def start(self) -> None:
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")
            self._log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {subprocess.list2cmdline(self.argv)}\n")
            self._log.flush()
        kwargs: dict = {}
        if sys.platform == "win32":
            # Its own process group, so a console Ctrl+C in Blender's terminal does not reach it, and no
            # console window pops up.
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        try:
            # A list of arguments and no shell: paths with spaces, quotes or non-ASCII pass unchanged.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, cwd=self.cwd, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
            )
        except FileNotFoundError as exc:
            self._close_log()
            raise JobError(f"Cannot start {self.argv[0]!r}: file not found") from exc
        except OSError as exc:
            self._close_log()
            raise JobError(f"Cannot start {self.argv[0]!r}: {exc.strerror or exc}") from exc
        self.started_at = time.monotonic()
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            t = threading.Thread(target=self._read, args=(name, stream), daemon=True, name=f"prd-{name}")
            t.start()
            self._threads.append(t)

    def _read(self, name: str, stream) -> None:
        try:
            for line in stream:
                line = line.rstrip("\r\n")
                if name == "stderr":
                    self.stderr_tail.append(line)
                self.lines.put((name, line))
                if self._log:
                    with self._log_lock:
                        if self._log:
                            self._log.write(line + "\n" if name == "stdout" else f"[stderr] {line}\n")
                            self._log.flush()
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the process is gone
        finally:
            stream.close()

    def drain(self, max_lines: int = 500) -> list[tuple[str, str]]:
        """Lines read since the last call (at most ``max_lines``, so one call stays short)."""
        out: list[tuple[str, str]] = []
        while len(out) < max_lines:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                break
        return out

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited *and* all its output has been read, else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        if any(t.is_alive() for t in self._threads):
            return None
        if not self.lines.empty():
            return None
        self._close_log()
        return self.proc.returncode

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Ask the process to stop: SIGTERM on POSIX (the trainer checkpoints and exits 3)."""
        if not self.running():
            return
        if sys.platform == "win32":
            # TerminateProcess cannot be caught; CTRL_BREAK reaches a process-group leader as SIGBREAK.
            try:
                os.kill(self.proc.pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                return
            except OSError:
                pass
        self.proc.terminate()

    def kill(self) -> None:
        if self.running():
            self.proc.kill()

    def _close_log(self) -> None:
        with self._log_lock:
            if self._log:
                self._log.close()
                self._log = None


@dataclass
class JobState:
    """What the panel shows; updated from the trainer's events on the main thread."""

    status: str = "starting"  # starting, running, cancelling, done, paused, cancelled, failed
    phase: str = "train"  # (scene: rendering the scene's cameras), train, then mesh when the job builds one
    stage: int = 0
    iteration: int = 0
    iterations: int = 0
    loss: float = 0.0
    psnr: float = 0.0
    eta_s: float = -1.0
    gaussians: int = 0
    backend: str = ""
    message: str = ""
    checkpoint_iteration: int = 0
    events: int = 0
    error_event: dict = field(default_factory=dict)
    with_mesh: bool = False  # a mesh step follows training (shares the progress bar)
    mesh_fraction: float = 0.0  # 0..1 estimate of the mesh step (elapsed time / expected time)
    mesh_done: bool = False
    mesh_faces: int = 0
    mesh_area_kept: float | None = None  # set when the mesh step could not keep the surface within its faces

    @property
    def finished(self) -> bool:
        return self.status in ("done", "paused", "cancelled", "failed")

    @property
    def fraction(self) -> float:
        if self.status == "done":
            return 1.0
        train = min(1.0, self.iteration / self.iterations) if self.iterations else 0.0
        if not self.with_mesh:
            return train
        if self.phase == "mesh":
            return TRAIN_SHARE + (1.0 - TRAIN_SHARE) * self.mesh_fraction
        return TRAIN_SHARE * train


def train_command(python: str, capture: str | Path, out: str | Path, *, iterations: int | None = None,
                  resolution: int | None = None, device: str = "auto", resume: bool = False,
                  overwrite: bool = False, distill_iterations: int | None = None,
                  light: tuple[str, float] | None = None, dielectric: bool = False) -> list[str]:
    """argv for ``python -m prd_blender.trainer train``; a resumed run keeps its capture, resolution, stages
    and light.

    ``distill_iterations``: iterations of each PRD stage 2-4; 0 trains the radiance field only.
    ``light``: (HDRI path, rotation in degrees) of the capture's surroundings, a known light.
    ``dielectric``: the object has no bare metal (the trainer's ``--dielectric`` prior)."""
    argv = [python, "-m", "prd_blender.trainer", "train", str(capture), "--out", str(out), "--device", device]
    if iterations:
        argv += ["--iterations", str(int(iterations))]
    if resume:
        argv.append("--resume")
    else:
        if distill_iterations == 0:
            argv += ["--stages", "1"]
        elif distill_iterations:
            argv += ["--distill-iterations", str(int(distill_iterations))]
        if resolution:
            argv += ["--resolution", str(int(resolution))]
        if light and distill_iterations != 0:
            argv += ["--light", str(light[0]), "--light-rotation", f"{float(light[1]):g}"]
        if dielectric and distill_iterations != 0:
            argv.append("--dielectric")
        if overwrite:
            argv.append("--overwrite")
    return argv


def mesh_command(python: str, out: str | Path, quality: str = "standard", texture_size: int = 1024,
                 device: str = "auto") -> list[str]:
    """argv for ``python -m prd_blender.trainer mesh``: surface, UVs, baked PBR textures and glb in ``out``."""
    return [python, "-m", "prd_blender.trainer", "mesh", str(out), "--quality", quality,
            "--texture-size", str(int(texture_size)), "--device", device]


def run_needs_mesh_only(out: str | Path) -> bool:
    """True when ``out`` holds a finished training run without a mesh (e.g. the mesh step was cancelled):
    Resume then builds the mesh instead of training again."""
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = manifest.get("files", {})
    return manifest.get("status") == "complete" and "gaussians" in files and "mesh" not in files


def _poses_message(ev: dict) -> str:
    """The panel's line for a structure-from-motion event of ``prd train PHOTOS`` (docs/handoff.md)."""
    step = ev.get("step", "")
    if step == "photos":
        return f"Camera poses: {ev.get('photos')} photos"
    if step in ("features", "undistort"):
        return f"Camera poses: {step} {ev.get('done')}/{ev.get('total')}"
    if step == "mapping":
        return f"Camera poses: registering photos ({ev.get('attempts')}/{ev.get('total')})"
    if step in ("unregistered", "few_features") and ev.get("message"):
        return f"Camera poses: {ev['message']}"
    return f"Camera poses: {step}" if step else "Camera poses"


class TrainerJob:
    """One ``prd train`` run, optionally followed by ``prd mesh`` on its result: start, poll (non-blocking),
    cancel; turns the output of both processes into one JobState.

    ``mesh``: (quality, texture size) of the mesh step, or None for none. ``mesh_only``: skip training (the
    run in ``out`` is complete) and build the mesh. ``light``, ``dielectric``: as for ``train_command``.
    """

    def __init__(self, python: str, capture: str | Path, out: str | Path, *, iterations: int | None = None,
                 resolution: int | None = None, device: str = "auto", resume: bool = False,
                 overwrite: bool = False, log_dir: Path | None = None, distill_iterations: int | None = None,
                 mesh: tuple[str, int] | None = None, mesh_only: bool = False,
                 scene_render: list[str] | None = None, light: tuple[str, float] | None = None,
                 dielectric: bool = False, blender: str | None = None):
        self.python = python
        # Blender's executable for the mesh step's Cycles renders (None: the trainer looks for one itself)
        self.blender = blender
        self.light = light
        self.dielectric = dielectric
        # argv of a first step that renders the scene's cameras into the capture folder (scene_render.py).
        self.scene_render = scene_render
        self.mesh = mesh
        self.mesh_only = mesh_only and mesh is not None
        self.mesh_started_at = 0.0
        self.distill_iterations = distill_iterations
        self.capture = str(capture)
        self.out = Path(out)
        self.iterations = iterations
        self.resolution = resolution
        self.device = device
        self.resume = resume
        self.overwrite = overwrite
        self.state = JobState(iterations=iterations or 0, with_mesh=mesh is not None)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_dir = Path(log_dir) if log_dir else self.out.parent
        self.log_path = log_dir / f"prd-{self.out.name}-{stamp}-{os.getpid()}.log"
        # Created by cancel(): the trainer stops (with a checkpoint) when it appears (PRD_STOP_FILE). The
        # portable twin of SIGTERM, needed on Windows, where CTRL_BREAK cannot reach a process that was
        # started without a console window. Kept beside the log, never in the user's output folder.
        self.stop_path = self.log_path.with_suffix(".stop")
        self.proc: BackgroundProcess | None = None
        self.cancel_requested_at = 0.0

    def start(self) -> None:
        """Start the trainer; raises JobError (message for the user) when that is impossible."""
        python = check_interpreter(self.python)
        if self.mesh_only:
            if not run_needs_mesh_only(self.out):
                raise JobError(f"{self.out} holds no finished run to build a mesh from")
            self._start_mesh(python)
            return
        if self.scene_render and not self.resume:
            self.proc = BackgroundProcess(self.scene_render, env=trainer_env(), cwd=PACKAGE_PARENT,
                                          log_path=self.log_path)
            self.proc.start()
            self.state.phase, self.state.status = "scene", "running"
            self.state.message = "Rendering the scene's cameras with Cycles"
            return
        self._start_train(python)

    def _start_train(self, python: str) -> None:
        if not self.resume and not os.path.exists(self.capture):
            raise JobError(f"Capture not found: {self.capture}")
        if self.resume and not (self.out / "checkpoint.pt").is_file():
            raise JobError(f"Nothing to resume: {self.out} has no checkpoint.pt")
        if self.overwrite:
            # Our own log from an earlier run; the trainer's --overwrite removes only the trainer's files.
            (self.out / JOB_LOG_NAME).unlink(missing_ok=True)
        argv = train_command(python, self.capture, self.out, iterations=self.iterations,
                             resolution=self.resolution, device=self.device, resume=self.resume,
                             overwrite=self.overwrite, distill_iterations=self.distill_iterations,
                             light=self.light, dielectric=self.dielectric)
        self.stop_path.unlink(missing_ok=True)
        env = trainer_env()
        env["PRD_STOP_FILE"] = str(self.stop_path)
        self.proc = BackgroundProcess(argv, env=env, cwd=PACKAGE_PARENT, log_path=self.log_path)
        self.proc.start()
        self.state.phase, self.state.status = "train", "running"
        self.state.message = "Starting the trainer"

    def _start_mesh(self, python: str) -> None:
        """Second step of the job: ``prd mesh`` on the finished run, logged into the same file."""
        quality, texture_size = self.mesh
        argv = mesh_command(python, self.out, quality, texture_size, self.device)
        env = trainer_env()
        if self.blender:  # the albedo refinement renders with this Blender (asset.refine)
            env["PRD_BLENDER"] = self.blender
        self.proc = BackgroundProcess(argv, env=env, cwd=PACKAGE_PARENT, log_path=self.log_path)
        self.proc.start()
        self.mesh_started_at = time.monotonic()
        s = self.state
        s.phase, s.status, s.eta_s, s.mesh_fraction = "mesh", "running", -1.0, 0.0
        s.message = f"Building the mesh ({quality}, {texture_size} px textures)"

    def cancel(self) -> None:
        """First call: SIGTERM (checkpoint, exit 3). A second call, or the grace time passing: kill."""
        if self.proc is None or self.state.finished:
            return
        if self.cancel_requested_at:
            self.proc.kill()
            return
        self.cancel_requested_at = time.monotonic()
        self.state.status = "cancelling"
        # The mesher keeps nothing partial (the manifest names its files only at the end): stopping is safe.
        self.state.message = ("Cancelling the mesh step" if self.state.phase == "mesh"
                              else "Cancelling: writing a checkpoint")
        try:
            self.stop_path.parent.mkdir(parents=True, exist_ok=True)
            self.stop_path.touch()
        except OSError:
            pass  # the signal below still does it on POSIX
        self.proc.terminate()

    def poll(self, max_lines: int = 500) -> bool:
        """Consume available output and check for exit; returns True when the state changed."""
        if self.proc is None or self.state.finished:
            return False
        changed = False
        for stream, line in self.proc.drain(max_lines):
            if stream == "stdout":
                changed |= self._on_stdout(line)
        if self.state.phase == "mesh" and self.state.status == "running":
            quality = self.mesh[0] if self.mesh else "standard"
            elapsed = time.monotonic() - self.mesh_started_at
            # Asymptotic: close to the estimate it slows down instead of stopping at 100 %.
            expected = MESH_EXPECTED_S.get(quality, 180.0)
            frac = 1.0 - 0.5 ** (elapsed / (0.5 * expected))
            if abs(frac - self.state.mesh_fraction) > 0.005:
                self.state.mesh_fraction = min(frac, 0.99)
                m, sec = divmod(int(elapsed), 60)
                self.state.message = f"Building the mesh ({quality}): {m}m {sec:02d}s"
                changed = True
        if (self.cancel_requested_at and self.proc.running()
                and time.monotonic() - self.cancel_requested_at > CANCEL_GRACE_S):
            self.proc.kill()
        code = self.proc.returncode
        if code is not None:
            self._finish(code)
            changed = True
        return changed

    def _on_stdout(self, line: str) -> bool:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            return False  # stray print from a library; it is in the log
        if not isinstance(ev, dict):
            return False
        s = self.state
        s.events += 1
        kind = ev.get("event")
        if kind == "backend":
            s.backend = str(ev.get("backend", ""))
            s.message = str(ev.get("why", ""))
        elif kind == "capture":
            s.message = f"Capture loaded: {ev.get('views')} views, {ev.get('width')}x{ev.get('height')} px"
        elif kind == "init":
            s.stage = int(ev.get("stage", s.stage))
            s.gaussians = int(ev.get("gaussians", 0))
            s.message = "Training"
        elif kind == "progress":
            s.stage = int(ev.get("stage", s.stage))
            s.iteration = int(ev.get("iteration", s.iteration))
            s.iterations = int(ev.get("iterations", s.iterations))
            s.loss = float(ev.get("loss", s.loss))
            s.psnr = float(ev.get("psnr", s.psnr))
            s.eta_s = float(ev.get("eta_s", s.eta_s))
            s.gaussians = int(ev.get("gaussians", s.gaussians))
            if s.status == "running":
                s.message = "Training"
        elif kind == "checkpoint":
            s.checkpoint_iteration = int(ev.get("iteration", 0))
        elif kind == "densify":
            s.gaussians = int(ev.get("gaussians", s.gaussians))
        elif kind in ("paused", "time_limit"):
            s.message = f"Paused at iteration {ev.get('iteration')}"
        elif kind == "done":
            s.iteration = int(ev.get("iterations", s.iteration))
            s.gaussians = int(ev.get("gaussians", s.gaussians))
            if ev.get("psnr") is not None:
                s.psnr = float(ev["psnr"])
            s.eta_s = 0.0
        elif kind in ("error", "cancelled"):
            s.error_event = ev
        elif kind == "scene_capture":
            s.message = f"Rendering the scene's cameras: {ev.get('done')}/{ev.get('total')}"
        elif kind == "poses":
            s.message = _poses_message(ev)
        elif kind == "refine":
            done = int(ev.get("step", 0)) + 1
            s.message = f"Refining the albedo through Cycles: step {done} of {ev.get('steps')} done"
        elif kind == "mesh":
            s.mesh_done = True
            s.mesh_faces = int(ev.get("faces") or 0)
            dec = ev.get("decimation") or {}
            s.mesh_area_kept = float(dec.get("area_kept", 0.0)) if dec.get("capped") else None
        return True

    def _finish(self, code: int) -> None:
        s = self.state
        s.eta_s = 0.0
        if s.phase == "mesh":
            self._finish_mesh(code)
            return
        if s.phase == "scene":
            if code == EXIT_OK and not self.cancel_requested_at:
                try:
                    self._start_train(check_interpreter(self.python))
                    return
                except JobError as exc:
                    s.status, s.message = "failed", str(exc)
            elif self.cancel_requested_at:
                s.status, s.message = "cancelled", "Cancelled while rendering the scene's cameras"
            else:
                tail = [ln for ln in (self.proc.stderr_tail if self.proc else []) if ln.strip()]
                msg = tail[-1] if tail else f"exit code {code}"
                s.status = "failed"
                s.message = f"Rendering the scene's cameras failed: {msg.removeprefix('prd: error: ')}"
            self._copy_log()
            return
        status = self._manifest_status()
        if code == EXIT_OK and status != "paused" and self.mesh is not None and not self.cancel_requested_at:
            try:
                self._start_mesh(check_interpreter(self.python))
                return
            except JobError as exc:
                s.status, s.message = "failed", f"Training finished, but the mesh step could not start: {exc}"
                self._copy_log()
                return
        if code == EXIT_OK:
            s.status = "paused" if status == "paused" else "done"
            s.message = ("Paused: press Resume to continue" if s.status == "paused"
                         else f"Done: {s.iteration} iterations, {s.gaussians} Gaussians")
        elif code == EXIT_CANCELLED or (self.cancel_requested_at and code < 0):
            s.status = "cancelled"
            if (self.out / "checkpoint.pt").is_file():
                s.message = f"Cancelled at iteration {s.checkpoint_iteration or s.iteration}: press Resume to continue"
            else:
                s.message = "Cancelled before training started: nothing to resume"
        else:
            s.status = "failed"
            s.message = self._failure_message(code)
        self._copy_log()

    def _finish_mesh(self, code: int) -> None:
        s = self.state
        if code == EXIT_OK:
            s.status, s.mesh_fraction = "done", 1.0
            trained = f"{s.iteration} iterations, {s.gaussians} Gaussians, " if s.iteration else ""
            s.message = f"Done: {trained}mesh of {s.mesh_faces:,} faces"
            if s.mesh_area_kept is not None:  # a noisy surface (too few iterations): say why it looks rough
                s.message += (f" (a noisy surface: {s.mesh_area_kept:.0%} of it kept at this size; "
                              "more iterations give a cleaner mesh)")
        elif self.cancel_requested_at:
            s.status = "cancelled"
            s.message = "Cancelled while building the mesh: the training result is kept; press Resume to build it"
        else:
            s.status = "failed"
            tail = [ln for ln in (self.proc.stderr_tail if self.proc else []) if ln.strip()]
            msg = tail[-1] if tail else f"exit code {code}"
            msg = msg[len("prd: error: "):] if msg.startswith("prd: error: ") else msg
            s.message = f"Training finished, but building the mesh failed: {msg} (see the log)"
        self._copy_log()

    def _manifest_status(self) -> str:
        try:
            return json.loads((self.out / "manifest.json").read_text(encoding="utf-8")).get("status", "")
        except (OSError, ValueError):
            return ""

    def _failure_message(self, code: int) -> str:
        """One sentence for the panel: the trainer's own message where it gave one."""
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"The trainer was killed ({name}), e.g. by the system when out of memory; see the log"
        tail = [ln for ln in (self.proc.stderr_tail if self.proc else []) if ln.strip()]
        text = "\n".join(tail)
        if "No module named 'torch'" in text or 'No module named "torch"' in text:
            return ("The trainer Python has no torch: install the trainer environment "
                    "(Preferences > Add-ons > PRD > Create Trainer Environment) or choose another interpreter")
        if "No module named 'prd_blender'" in text:
            return "The trainer Python cannot import prd_blender.trainer (PYTHONPATH); see the log"
        msg = ""
        for ln in reversed(tail):
            if ln.startswith("prd: error: ") or ln.startswith("prd: "):
                msg = ln.split(": ", 1)[1]
                msg = msg[len("error: "):] if msg.startswith("error: ") else msg
                break
        if not msg and self.state.error_event.get("message"):
            msg = f"{self.state.error_event.get('kind', 'Error')}: {self.state.error_event['message']}"
        if not msg and tail:
            msg = tail[-1]  # e.g. the last line of a traceback
        if code == EXIT_BAD_INPUT:
            return f"Bad input: {msg}" if msg else "Bad input (see the log)"
        # The trainer speaks command-line; the panel user picks the device in the panel.
        msg = msg.replace("Use --device cpu.", "Choose Device: CPU in the panel.")
        return f"Trainer failed: {msg}" if msg else f"Trainer failed with exit code {code} (see the log)"

    def _copy_log(self) -> None:
        self.stop_path.unlink(missing_ok=True)  # the job is over (every end of a job passes here)
        # Only into a folder the trainer has made its own (it has a manifest): an extra file in a new,
        # empty folder would make the next run refuse that folder as "not empty and not a prd folder".
        try:
            if (self.out / "manifest.json").is_file() and self.log_path.is_file():
                with open(self.out / JOB_LOG_NAME, "a", encoding="utf-8") as dst:
                    dst.write(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            pass  # the log in the user's log folder remains


# --- the trainer environment: check and install ---------------------------------------------------------

_CHECK_SCRIPT = r"""
import importlib, json, sys
r = {"python": sys.version.split()[0], "executable": sys.executable}
for mod in ("numpy", "torch", "numba", "PIL", "OpenEXR", "gsplat"):
    try:
        m = importlib.import_module(mod)
        r[mod] = str(getattr(m, "__version__", "installed"))
    except Exception as exc:
        r[mod] = None
        r[mod + "_error"] = f"{type(exc).__name__}: {exc}"
if r["torch"]:
    import torch
    r["cuda"] = bool(torch.cuda.is_available())
    r["cuda_version"] = torch.version.cuda
    if r["cuda"]:
        r["gpu"] = torch.cuda.get_device_name(0)
try:
    import prd_blender.trainer
    r["trainer"] = prd_blender.__version__
    r["trainer_path"] = prd_blender.__file__
except Exception as exc:
    r["trainer"] = None
    r["trainer_error"] = f"{type(exc).__name__}: {exc}"
print("PRD-CHECK " + json.dumps(r))
"""


def summarize_check(r: dict) -> tuple[bool, str]:
    """(usable for training, one line for the UI) from the check script's result."""
    def v(key: str) -> str:
        return r.get(key) or "missing"

    parts = [f"Python {r.get('python', '?')}", f"torch {v('torch')}"]
    if r.get("torch"):
        parts.append(f"CUDA {'yes' if r.get('cuda') else 'no'}" + (f" ({r['gpu']})" if r.get("gpu") else ""))
    parts += [f"gsplat {v('gsplat')}", f"numba {v('numba')}", f"pillow {v('PIL')}", f"OpenEXR {v('OpenEXR')}"]
    ok = all(r.get(k) for k in ("torch", "numba", "numpy", "PIL", "trainer"))
    if not r.get("trainer"):
        parts.append(f"trainer not importable ({r.get('trainer_error', '?')})")
    return ok, ", ".join(parts)


class EnvCheck:
    """Run the check script in the trainer Python without blocking; ``poll`` returns the result when done."""

    def __init__(self, python: str, timeout_s: float = 90.0):
        self.python = python
        self.timeout_s = timeout_s
        self.proc: BackgroundProcess | None = None
        self.result: dict | None = None
        self.error = ""
        self._stdout: list[str] = []

    def start(self) -> None:
        python = check_interpreter(self.python)
        self.proc = BackgroundProcess([python, "-c", _CHECK_SCRIPT], env=trainer_env(), cwd=PACKAGE_PARENT)
        self.proc.start()

    @property
    def finished(self) -> bool:
        return self.result is not None or bool(self.error)

    def poll(self) -> bool:
        """True once finished (``result`` or ``error`` set)."""
        if self.finished:
            return True
        if self.proc is None:
            self.error = "not started"
            return True
        self._stdout += [ln for s, ln in self.proc.drain() if s == "stdout"]
        code = self.proc.returncode
        if code is None:
            if time.monotonic() - self.proc.started_at > self.timeout_s:
                self.proc.kill()
                self.error = f"The check took longer than {self.timeout_s:.0f} s and was stopped"
                return True
            return False
        for ln in self._stdout:
            if ln.startswith("PRD-CHECK "):
                self.result = json.loads(ln[len("PRD-CHECK "):])
                return True
        tail = [ln for ln in self.proc.stderr_tail if ln.strip()]
        self.error = f"The interpreter failed (exit {code}): {tail[-1] if tail else 'no output'}"
        return True


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def install_steps(base_python: str, venv: Path, packages: list[str], index_url: str = "") -> list[list[str]]:
    """Commands that create a venv and pip-install the trainer's dependencies into it.

    The trainer itself is not pip-installed: jobs import it from the extension folder (PYTHONPATH), so
    it always matches the installed extension version.
    """
    steps = [[base_python, "-m", "venv", str(venv)] + ([] if packages else ["--without-pip"])]
    if packages:
        py = str(venv_python(venv))
        steps.append([py, "-m", "pip", "install", "--upgrade", "pip"])
        # torch first and alone, so that a chosen index (CPU or a CUDA build) applies to it only.
        torch_pkgs = [p for p in packages if p.split("=")[0].split(">")[0].split("<")[0].strip() == "torch"]
        others = [p for p in packages if p not in torch_pkgs]
        if torch_pkgs:
            steps.append([py, "-m", "pip", "install", *torch_pkgs] + (["--index-url", index_url] if index_url else []))
        if others:
            steps.append([py, "-m", "pip", "install", *others])
    return steps


class EnvInstaller:
    """Runs ``install_steps`` one after the other in the background; ``poll`` advances it."""

    def __init__(self, steps: list[list[str]], log_path: Path | None = None):
        self.steps = steps
        self.log_path = log_path
        self.index = -1
        self.proc: BackgroundProcess | None = None
        self.done = False
        self.error = ""
        self.last_line = ""

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.steps):
            self.done = True
            return
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        self.proc = BackgroundProcess(self.steps[self.index], env=env, log_path=self.log_path)
        self.proc.start()

    @property
    def finished(self) -> bool:
        return self.done or bool(self.error)

    def poll(self) -> bool:
        """True once finished (``done`` or ``error`` set)."""
        if self.finished:
            return True
        if self.proc is None:
            self.error = "not started"
            return True
        for _, line in self.proc.drain():
            if line.strip():
                self.last_line = line.strip()[:200]
        code = self.proc.returncode
        if code is None:
            return False
        if code != 0:
            tail = [ln for ln in self.proc.stderr_tail if ln.strip()]
            self.error = f"'{' '.join(self.steps[self.index][1:4])}' failed (exit {code}): {tail[-1] if tail else ''}"
            return True
        try:
            self._next()
        except JobError as exc:
            self.error = str(exc)
        return self.finished

    def cancel(self) -> None:
        if self.proc:
            self.proc.kill()
        self.error = self.error or "cancelled"

    @property
    def progress_text(self) -> str:
        return f"step {self.index + 1}/{len(self.steps)}: {self.last_line}"
