"""The hand-off folder: layout, manifest and the rule that a user's files are never overwritten silently.

See docs/handoff.md for the format the Blender side reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .capture import View

MANIFEST = "manifest.json"
FORMAT = "prd-output"
VERSION = 1
# Files a run writes; --overwrite removes only these, never anything else in the folder.
OWN_FILES = (
    MANIFEST, "run.json", "progress.jsonl", "checkpoint.pt", "checkpoint.pt.tmp", "point_cloud.ply",
    "point_cloud.ply.tmp", "cameras.json", "eval.json", "environment.exr", "visibility.npz", "maps.json",
    # ``prd mesh`` (prd_blender.trainer.asset)
    "mesh.ply", "mesh_albedo.png", "mesh_orm.png", "mesh_normal.png", "mesh.glb",
)


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked."""


def prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Create ``out`` for a new run, or check it for ``resume``; refuse to clobber anything."""
    if resume:
        if not (out / MANIFEST).is_file() or not (out / "checkpoint.pt").is_file():
            raise OutputFolderError(f"cannot resume: {out} has no {MANIFEST} and checkpoint.pt from an earlier run")
        return
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise OutputFolderError(
                f"output folder {out} is not empty and is not a prd output folder; choose an empty or new folder "
                "(nothing was changed)"
            )
        if not overwrite:
            raise OutputFolderError(
                f"output folder {out} already holds a prd run; pass --resume to continue it, --overwrite to replace "
                "it, or choose another folder (nothing was changed)"
            )
        _remove_view_maps(out)
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _remove_view_maps(out: Path) -> None:
    """Delete exactly the per-view maps an earlier run listed in maps.json (never the whole folder)."""
    try:
        records = json.loads((out / "maps.json").read_text(encoding="utf-8"))["views"]
    except (OSError, ValueError, KeyError):
        return
    folders = set()
    for rec in records:
        for rel in rec.get("files", {}).values():
            p = out / rel
            if p.resolve().is_relative_to(out.resolve()):
                p.unlink(missing_ok=True)
                folders.add(p.parent)
    for f in folders:
        if f.is_dir() and not any(f.iterdir()):
            f.rmdir()


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputFolderError(f"{path} cannot be read: {exc}") from exc
    if data.get("format") != FORMAT:
        raise OutputFolderError(f"{path} is not a prd manifest")
    return data


def update_manifest(out: Path, **fields) -> dict:
    path = out / MANIFEST
    data = read_manifest(out) if path.is_file() else {"format": FORMAT, "version": VERSION, "files": {}}
    files = fields.pop("files", {})
    data.update(fields)
    data["files"].update(files)
    write_json(path, data)
    return data


def cameras_record(views: list[View], split: str) -> list[dict]:
    """Cameras in both conventions the two sides want: OpenCV world-to-camera and Blender camera-to-world."""
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    rec = []
    for v in views:
        rec.append({
            "name": v.name, "split": split, "width": v.width, "height": v.height,
            "fx": float(v.K[0, 0]), "fy": float(v.K[1, 1]), "cx": float(v.K[0, 2]), "cy": float(v.K[1, 2]),
            "world_to_cam_opencv": v.world_to_cam.tolist(),
            "cam_to_world_blender": (v.cam_to_world @ flip).tolist(),
            "image": str(v.path) if v.path else None,
        })
    return rec
