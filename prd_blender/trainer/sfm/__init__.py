"""Structure-from-motion for bare photo folders: ``prd poses`` and the first step of ``prd train PHOTOS``.

Never imports bpy; pycolmap is imported only when poses are actually computed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .photos import HEIC_EXTENSIONS, PHOTO_EXTENSIONS, RAW_EXTENSIONS

if TYPE_CHECKING:
    from .run import PosesConfig

__all__ = ["is_photo_folder", "poses_for_training"]

SFM_SUBFOLDER = "sfm"


def is_photo_folder(path: str | Path) -> bool:
    """A folder of photos and nothing that poses them (no transforms*.json, no COLMAP model)."""
    from ..capture.colmap import find_model_dir

    p = Path(path).expanduser()
    if not p.is_dir() or any(p.glob("transforms*.json")):
        return False
    try:
        if find_model_dir(p) is not None:
            return False
    except ValueError:  # an incomplete model: let the capture loader report it
        return False
    exts = PHOTO_EXTENSIONS + HEIC_EXTENSIONS + RAW_EXTENSIONS
    return any(q.is_file() and q.suffix.lower() in exts for q in p.iterdir())


def poses_for_training(
    capture: str | Path, out: Path, *, overwrite: bool, quiet: bool, config: PosesConfig | None = None
) -> Path:
    """What ``prd train`` should load: ``capture`` itself, or for a photo folder the poses computed into
    ``out/sfm`` first (the run folder is claimed before, so a bad ``--out`` fails before minutes of SfM).

    The manifest says ``status: running, stage: 0`` meanwhile, so a watcher sees the job alive; the
    following training run replaces it.
    """
    if not is_photo_folder(capture):
        return Path(capture)
    from ..outputs import prepare_output, update_manifest
    from .run import run_poses

    out = Path(out)
    prepare_output(out, resume=False, overwrite=overwrite)
    update_manifest(out, status="running", stage=0, capture=str(Path(capture).resolve()),
                    files={"poses": f"{SFM_SUBFOLDER}/sfm.json"})
    sfm_dir = out / SFM_SUBFOLDER
    if sfm_dir.is_dir():  # left by an earlier (replaced or failed) run in this prd folder: ours to remove
        shutil.rmtree(sfm_dir)
    try:
        # the poses log is sfm/progress.jsonl: the training run that follows starts its own progress.jsonl
        run_poses(capture, sfm_dir, config, overwrite=True, quiet=quiet)
    except BaseException as exc:
        update_manifest(out, status="failed", error=str(exc))
        raise
    return sfm_dir
