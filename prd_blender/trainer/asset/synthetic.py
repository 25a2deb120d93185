"""Synthetic inputs with known answers for the asset tests: flat Gaussians tiling a sphere, two colours."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..outputs import update_manifest
from ..train.gaussians import SH_COEFFS, Gaussians

RED = (0.8, 0.1, 0.1)
BLUE = (0.1, 0.2, 0.8)


def _logit(x: np.ndarray) -> torch.Tensor:
    x = np.clip(np.asarray(x, np.float64), 1e-4, 1 - 1e-4)
    return torch.tensor(np.log(x / (1 - x)), dtype=torch.float32)


def sphere_gaussians(radius: float = 0.5, n: int = 2000, roughness: float = 0.4, metallic: float = 0.2,
                     opacity: float = 0.95) -> Gaussians:
    """Disc-like Gaussians on a Fibonacci sphere, their thin axis along the normal; albedo RED where z > 0,
    BLUE below."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    normal = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    spacing = math.sqrt(4 * math.pi / n) * radius
    # quaternion (w first) turning +z (the thin axis, scale index 2) onto the normal
    axis = np.cross(np.array([0.0, 0.0, 1.0]), normal)
    s = np.linalg.norm(axis, axis=1, keepdims=True)
    axis = np.where(s > 1e-9, axis / np.maximum(s, 1e-12), np.array([1.0, 0.0, 0.0]))
    ang = np.arccos(np.clip(normal[:, 2], -1, 1))
    quats = np.concatenate([np.cos(ang / 2)[:, None], np.sin(ang / 2)[:, None] * axis], 1)
    scales = np.log(np.tile([spacing * 0.8, spacing * 0.8, spacing * 0.05], (n, 1)))
    albedo = np.where(normal[:, 2:3] > 0, np.array([RED]), np.array([BLUE]))
    return Gaussians({
        "means": torch.tensor(normal * radius, dtype=torch.float32),
        "quats": torch.tensor(quats, dtype=torch.float32),
        "scales": torch.tensor(scales, dtype=torch.float32),
        "opacities": _logit(np.full(n, opacity)),
        "sh0": torch.zeros(n, 1, 3),
        "shN": torch.zeros(n, SH_COEFFS - 1, 3),
        "albedo": _logit(albedo),
        "roughness": _logit(np.full((n, 1), roughness)),
        "metallic": _logit(np.full((n, 1), metallic)),
        "progress": _logit(np.full((n, 1), 0.9)),
    })


def write_run_folder(out: Path, model: Gaussians, n_cameras: int = 8, size: int = 48, distance: float = 2.5) -> Path:
    """A minimal finished-run folder: manifest, point_cloud.ply and cameras.json (cameras around the origin)."""
    from .surface import sphere_cameras

    out.mkdir(parents=True, exist_ok=True)
    model.save_ply(out / "point_cloud.ply")
    cams = sphere_cameras(np.zeros(3), 0.6, distance, n_cameras, size)
    recs = []
    for c in cams:
        K = c.K.numpy()
        recs.append({
            "name": c.name, "split": "train", "width": c.width, "height": c.height, "fx": float(K[0, 0]),
            "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "world_to_cam_opencv": c.viewmat.numpy().astype(float).tolist(),
        })
    (out / "cameras.json").write_text(json.dumps({"cameras": recs}), encoding="utf-8")
    update_manifest(out, status="complete", stage=4, files={"gaussians": "point_cloud.ply", "cameras": "cameras.json"})
    return out
