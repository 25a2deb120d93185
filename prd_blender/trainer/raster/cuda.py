"""CUDA backend: gsplat's fused projection and tile rasteriser."""

from __future__ import annotations

import torch


def gsplat_status() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and why not."""
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    try:
        import gsplat  # noqa: F401
    except Exception as exc:  # an ImportError or a failed extension build
        return False, f"gsplat does not load ({type(exc).__name__}: {exc})"
    return True, f"CUDA device {torch.cuda.get_device_name(0)} with gsplat {gsplat.__version__}"


def rasterize_gsplat(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near_plane: float,
    eps2d: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns features (H, W, C), alpha (H, W), expected depth (H, W), means2d (N, 2), radii (N, 2)."""
    from gsplat import rasterization

    # gsplat composites expected depth as an extra channel ("RGB+ED") and normalises it by alpha.
    render, alpha, meta = rasterization(
        means, quats, scales, opacities, features, viewmat[None], K[None], width, height,
        near_plane=near_plane, eps2d=eps2d, render_mode="RGB+ED", packed=False,
        rasterize_mode="classic", sh_degree=None,
    )
    radii = meta["radii"][0]
    if radii.dim() == 1:
        radii = radii[:, None].expand(-1, 2)
    return render[0, ..., :-1], alpha[0, ..., 0], render[0, ..., -1], meta["means2d"], radii
