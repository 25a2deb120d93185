"""Rasterisation of 3D Gaussians: one entry point, ``rasterization()``, over three backends.

- ``cuda``: gsplat's kernels (needs an NVIDIA GPU and gsplat).
- ``cpu``: tile kernels compiled with Numba, forward and backward, on all cores.
- ``reference``: dense pure PyTorch, for tests and benchmarks only.

All return any number of feature channels plus expected depth and alpha, and are differentiable with
respect to means, quaternions, scales, opacities and features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, project_gaussians

__all__ = ["ALPHA_MAX", "ALPHA_MIN", "T_MIN", "RasterOutput", "choose_backend", "median_depth_map", "rasterization"]

BACKENDS = ("auto", "cpu", "cuda", "reference")


@dataclass
class RasterOutput:
    features: torch.Tensor  # (H, W, C)
    alpha: torch.Tensor  # (H, W)
    depth: torch.Tensor  # (H, W) expected camera z of the visible surface (0 where alpha is 0)
    means2d: torch.Tensor  # (N, 2); its .grad drives densification
    radii: torch.Tensor  # (N, 2) int, 0 for Gaussians not drawn
    backend: str
    # (H, W) camera z where transmittance crosses 0.5 (0 where it never does); only when asked for, and
    # without gradient: surface extraction wants the first surface, not the average of every layer.
    median_depth: torch.Tensor | None = None


def choose_backend(requested: str = "auto") -> tuple[str, str]:
    """Resolve ``auto``/``cpu``/``cuda``/``reference`` to a backend, with a sentence saying why."""
    from .cuda import gsplat_status

    if requested not in BACKENDS:
        raise ValueError(f"unknown device/backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "reference":
        return "reference", "dense PyTorch reference requested (slow; for testing)"
    if requested == "cpu":
        return "cpu", "CPU backend requested"
    ok, why = gsplat_status()
    if requested == "cuda":
        if not ok:
            raise RuntimeError(f"CUDA backend requested but unavailable: {why}. Use --device cpu.")
        return "cuda", f"CUDA backend requested: {why}"
    if ok:
        return "cuda", f"auto: using CUDA ({why})"
    return "cpu", f"auto: using the CPU backend because {why}"


def rasterization(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    backend: str = "cpu",
    near_plane: float = 0.01,
    eps2d: float = 0.3,
    median_depth: bool = False,
) -> RasterOutput:
    """Render N Gaussians with C feature channels from one OpenCV pinhole camera.

    means (N, 3), quats (N, 4) w first, scales (N, 3) > 0, opacities (N,) in (0, 1),
    features (N, C), viewmat (4, 4) world-to-camera (x right, y down, z forward), K (3, 3).
    ``backend`` is a resolved name (see ``choose_backend``). ``median_depth`` also fills
    ``RasterOutput.median_depth`` (computed by the CPU kernel on every backend: a forward-only extra).
    """
    if backend == "cuda":
        from .cuda import rasterize_gsplat

        feats, alpha, depth, means2d, radii = rasterize_gsplat(
            means, quats, scales, opacities, features, viewmat, K, width, height, near_plane, eps2d
        )
        med = None
        if median_depth:
            med = _median(means, quats, scales, opacities, viewmat, K, width, height, near_plane, eps2d)
            med = med.to(feats.device)
        return RasterOutput(feats, alpha, depth, means2d, radii, backend, med)

    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height, near_plane, eps2d)
    # Depth rides along as one more channel, then is normalised by alpha like gsplat's "ED" mode.
    ext = torch.cat([features, proj.depths[:, None]], dim=1)
    if backend == "cpu":
        from .cpu import composite_cpu

        out, alpha = composite_cpu(proj.means2d, proj.conics, opacities, ext, proj.radii, proj.depths, width, height)
    elif backend == "reference":
        from .reference import composite_dense

        out, alpha = composite_dense(proj, opacities, ext, width, height)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    depth = out[..., -1] / alpha.clamp_min(1e-10)
    med = None
    if median_depth:
        from .cpu import median_depth_cpu

        with torch.no_grad():
            med = median_depth_cpu(proj.means2d, proj.conics, opacities, proj.radii, proj.depths, width, height)
    return RasterOutput(out[..., :-1], alpha, depth, proj.means2d, proj.radii, backend, med)


def median_depth_map(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                     viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, *, near_plane: float = 0.01,
                     eps2d: float = 0.3) -> torch.Tensor:
    """Only the median depth (H, W) of ``rasterization(..., median_depth=True)``, on the CPU, without gradient:
    camera z where transmittance crosses 0.5, 0 where it never does."""
    return _median(means, quats, scales, opacities, viewmat, K, width, height, near_plane, eps2d)


@torch.no_grad()
def _median(means, quats, scales, opacities, viewmat, K, width, height, near_plane, eps2d) -> torch.Tensor:
    from .cpu import median_depth_cpu

    args = [t.detach().cpu() for t in (means, quats, scales, opacities, viewmat, K)]
    proj = project_gaussians(*args, width, height, near_plane, eps2d)
    return median_depth_cpu(proj.means2d, proj.conics, args[3], proj.radii, proj.depths, width, height)
