"""Projection of 3D Gaussians to screen-space 2D Gaussians (EWA splatting), in plain PyTorch.

Shared by the CPU backend and the dense reference: it is cheap (O(N)) and autograd gives its
gradients, so only the O(pixels x Gaussians) compositing needs compiled kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Alpha below this is skipped when compositing; also sets each Gaussian's screen extent.
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
# Compositing stops before a Gaussian that would push transmittance to or below this.
T_MIN = 1e-4


@dataclass
class Projected:
    means2d: torch.Tensor  # (N, 2) pixel coordinates, pixel centres at i + 0.5
    conics: torch.Tensor  # (N, 3) inverse 2D covariance (a, b, c): [[a, b], [b, c]]
    depths: torch.Tensor  # (N,) camera-space z
    radii: torch.Tensor  # (N, 2) int32 half-extent in pixels (x, y); 0 for culled Gaussians
    valid: torch.Tensor  # (N,) bool


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions, w first, any norm -> (N, 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World-space covariance R S S^T R^T, (N, 3, 3)."""
    m = quat_to_rotmat(quats) * scales[:, None, :]
    return m @ m.transpose(1, 2)


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    eps2d: float = 0.3,
) -> Projected:
    """Project Gaussians through an OpenCV pinhole camera (world-to-camera ``viewmat``)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    valid = z > near_plane
    zs = torch.where(valid, z, torch.ones_like(z))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Clamp the Jacobian's view direction to a bit beyond the frustum (as 3DGS does): Gaussians far
    # outside the image would otherwise get huge, unstable footprints.
    tx = torch.clamp(x / zs, -1.3 * cx / fx, 1.3 * (width - cx) / fx) * zs
    ty = torch.clamp(y / zs, -1.3 * cy / fy, 1.3 * (height - cy) / fy) * zs
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], dim=-1
    ).reshape(-1, 2, 3)
    cov_cam = R @ covariance_3d(quats, scales) @ R.T
    cov2d = J @ cov_cam @ J.transpose(1, 2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    with torch.no_grad():
        # Opacity-aware extent: outside the ellipse where opacity * G = ALPHA_MIN a Gaussian can never
        # contribute, so the tile kernels and the dense reference agree exactly.
        o = opacities.clamp_min(1e-12)
        r2 = 2.0 * torch.log(o / ALPHA_MIN)
        valid = valid & (r2 > 0)
        r2 = r2.clamp_min(0)
        rx = torch.ceil(torch.sqrt(r2 * a))
        ry = torch.ceil(torch.sqrt(r2 * c))
        mx, my = means2d[:, 0], means2d[:, 1]
        on_screen = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        valid = valid & on_screen
        radii = torch.stack([rx, ry], dim=-1).where(valid[:, None], torch.zeros_like(means2d)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii, valid=valid)
