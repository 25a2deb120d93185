"""One outward sign per Gaussian normal, voted by the training views, kept in the quaternion.

A Gaussian's normal is its shortest axis, whose sign is arbitrary. Flipping it to face each camera (3DGS-DR,
GaussianShader) is right wherever the surface faces the camera, and wrong at the silhouette: there the true
normal is almost perpendicular to the view, a small tilt either way decides the flip, and the flipped normals'
tangential parts cancel in the blend. The splatted normal then leans towards the viewer (relighting run 19:
20° off on the outermost pixel ring against 4° one ring in). So the sign is voted once: each training view
adds, per Gaussian, its blend weight in that view times the sign of its normal's facing to that camera.

The sign is stored in the quaternion itself: turning a Gaussian by 180° about its longest axis flips its other
two axes and leaves the ellipsoid (and so every render and the PLY a viewer reads) unchanged.
"""

from __future__ import annotations

import torch

from ..raster import rasterization
from .gaussians import Gaussians, shortest_axes
from .render import Camera


def half_turn_about_longest(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """The quaternions turned by 180° about each Gaussian's longest axis, in its own frame (q ⊗ (0, e_k)).

    A signed permutation of the four components, so Adam's moments can be turned the same way."""
    w, x, y, z = quats.unbind(-1)
    k = log_scales.argmax(dim=1)
    about_x = torch.stack([-x, w, z, -y], -1)
    about_y = torch.stack([-y, -z, w, x], -1)
    about_z = torch.stack([-z, y, -x, w], -1)
    return torch.where((k == 0)[:, None], about_x, torch.where((k == 1)[:, None], about_y, about_z))


def vote_signs(model: Gaussians, cams: list[Camera], backend: str) -> torch.Tensor:
    """Per Gaussian, the blend-weighted vote of ``cams`` on its shortest axis facing them (N,); 0 if unseen."""
    means, quats = model.means.detach(), model.quats.detach()
    scales, opac = model.scales.detach(), model.opacities.detach()
    axis = shortest_axes(quats, model.params["scales"].detach())
    vote = torch.zeros(len(model))
    for cam in cams:
        # The gradient of the summed image with respect to a constant channel is each Gaussian's total blend
        # weight in the view: what the view saw of it.
        ones = torch.ones(len(model), 1, device=means.device, requires_grad=True)
        out = rasterization(means, quats, scales, opac, ones, cam.viewmat.to(means), cam.K.to(means), cam.width,
                            cam.height, backend=backend)
        out.features.sum().backward()
        facing = ((cam.centre.to(means) - means) * axis).sum(-1)
        vote += ones.grad[:, 0].cpu() * torch.sign(facing).cpu()
    return vote


def orient_normals(model: Gaussians, cams: list[Camera], backend: str, optimizer: torch.optim.Adam | None = None,
                   max_views: int = 32) -> int:
    """Turn every Gaussian whose normal the views vote against, and mark the model oriented.

    Uses at most ``max_views`` of ``cams`` spread over the list. Gaussians no view saw keep their sign.
    ``optimizer``: the quaternions' Adam, whose moments are permuted with them. Returns how many turned."""
    step = max(1, -(-len(cams) // max_views))
    vote = vote_signs(model, cams[::step], backend)
    turn = vote < 0
    with torch.no_grad():
        q, ls = model.params["quats"], model.params["scales"]
        q[turn] = half_turn_about_longest(q[turn], ls[turn])
        state = optimizer.state.get(q) if optimizer is not None else None
        if state:
            state["exp_avg"][turn] = half_turn_about_longest(state["exp_avg"][turn], ls[turn])
            # The turn only moves and negates components, so the squared moments are moved, not negated.
            state["exp_avg_sq"][turn] = half_turn_about_longest(state["exp_avg_sq"][turn], ls[turn]).abs()
    model.oriented = True
    return int(turn.sum())
