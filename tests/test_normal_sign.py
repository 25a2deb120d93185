"""Normals with a voted outward sign: the quaternion half turn, the vote, the silhouette, the PLY flag."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from prd_blender.trainer.asset.surface import look_at_camera, sphere_cameras
from prd_blender.trainer.raster.projection import covariance_3d, quat_to_rotmat
from prd_blender.trainer.train.gaussians import ORIENTED_COMMENT, Gaussians, ply_comments, read_ply
from prd_blender.trainer.train.normal_sign import half_turn_about_longest, orient_normals, shortest_axes
from prd_blender.trainer.train.render import pixel_rays, render_pbr_maps


def _quat_from_rotmat(r: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(1e-12, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    return np.array([w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w)])


def disc_sphere(n: int = 3000, seed: int = 0, tilt: float = 0.0, thickness: float = 0.02,
                opacity_logit: float = 4.0) -> tuple[Gaussians, np.ndarray]:
    """Flat discs tiling the unit sphere, each shortest axis radial with a random sign, tilted by a random
    vector of about ``tilt`` radians. ``thickness``: shortest over longest axis."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = k * math.pi * (3 - math.sqrt(5))
    p = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)
    quats = []
    for i in range(n):
        nrm = p[i] + tilt * rng.normal(size=3) / math.sqrt(2)
        nrm = nrm / np.linalg.norm(nrm) * (1 if rng.random() < 0.5 else -1)
        a = np.cross(nrm, [0.3, 0.5, 0.8])
        a /= np.linalg.norm(a)
        b = np.cross(nrm, a)
        r = np.stack([a, b, nrm], 1)  # columns: local x, y, z; z is the shortest
        if np.linalg.det(r) < 0:
            r[:, 0] *= -1
        quats.append(_quat_from_rotmat(r) * (1 + rng.random()))  # any norm
    disc = math.sqrt(4 * math.pi / n)  # about the spacing between discs
    model = Gaussians({
        "means": torch.tensor(p, dtype=torch.float32),
        "quats": torch.tensor(np.array(quats), dtype=torch.float32),
        "scales": torch.log(torch.tensor([[1.2 * disc, 1.2 * disc, thickness * 1.2 * disc]] * n, dtype=torch.float32)),
        "opacities": torch.full((n,), opacity_logit),
        "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 15, 3),
    })
    model.add_pbr()
    return model, p


def test_half_turn_keeps_the_ellipsoid_and_flips_the_normal():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(200, 4, generator=g)
    ls = torch.randn(200, 3, generator=g)
    q2 = half_turn_about_longest(q, ls)
    assert torch.allclose(q2.norm(dim=-1), q.norm(dim=-1))
    assert torch.allclose(covariance_3d(q2, ls.exp()), covariance_3d(q, ls.exp()), atol=1e-5)
    assert torch.allclose(shortest_axes(q2, ls), -shortest_axes(q, ls), atol=1e-5)
    longest = ls.argmax(1)
    r, r2 = quat_to_rotmat(q), quat_to_rotmat(q2)
    idx = longest[:, None, None].expand(-1, 3, 1)
    assert torch.allclose(torch.gather(r2, 2, idx), torch.gather(r, 2, idx), atol=1e-5)


def test_the_vote_turns_every_inward_normal_outward_and_permutes_adam():
    model, p = disc_sphere(1500)
    inward = (shortest_axes(model.quats.detach(), model.params["scales"].detach()) * torch.tensor(
        p, dtype=torch.float32)).sum(-1) < 0
    assert 0.4 < inward.float().mean() < 0.6
    opt = torch.optim.Adam([model.params["quats"]], lr=1e-3)
    model.params["quats"].grad = torch.randn_like(model.params["quats"])
    opt.step()
    m1 = opt.state[model.params["quats"]]["exp_avg"].clone()
    cams = sphere_cameras(np.zeros(3), 1.0, 4.0, 20, 48)
    turned = orient_normals(model, cams, "cpu", opt)
    assert model.oriented
    axis = shortest_axes(model.quats.detach(), model.params["scales"].detach())
    outward = (axis * torch.tensor(p, dtype=torch.float32)).sum(-1) > 0
    assert outward.float().mean() > 0.99, outward.float().mean()
    assert abs(turned - int(inward.sum())) <= 0.01 * len(model)
    turn = inward & outward  # the ones the vote turned
    st = opt.state[model.params["quats"]]
    assert torch.allclose(st["exp_avg"][turn], half_turn_about_longest(m1[turn], model.params["scales"][turn]))
    assert (st["exp_avg_sq"] >= 0).all()


def _ring_error(model: Gaussians, cam) -> tuple[float, float]:
    """Mean angle (deg) between the splatted and the true sphere normal: outermost pixel ring, interior."""
    maps = render_pbr_maps(model, cam, 0, "cpu")
    d = F.normalize(pixel_rays(cam), dim=-1)
    o = cam.centre
    b = (d * o).sum(-1)
    disc = b * b - (o * o).sum() + 1
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    true_n = F.normalize(o + t[..., None] * d, dim=-1)
    ang = torch.rad2deg(torch.acos((maps["normal"] * true_n).sum(-1).clamp(-1, 1)))
    inner = hit.clone()
    inner[1:-1, 1:-1] = hit[1:-1, 1:-1] & hit[:-2, 1:-1] & hit[2:, 1:-1] & hit[1:-1, :-2] & hit[1:-1, 2:]
    ring = hit & ~inner
    return float(ang[ring].mean().detach()), float(ang[inner].mean().detach())


def test_oriented_normals_do_not_lean_to_the_viewer_at_the_silhouette():
    # Noisy, thick-ish, half-transparent discs, as a trained model's are (relighting run 19).
    model, _ = disc_sphere(3000, tilt=0.3, thickness=0.3, opacity_logit=-1.0)
    orient_normals(model, sphere_cameras(np.zeros(3), 1.0, 4.0, 20, 64), "cpu")
    cam = look_at_camera(np.array([0.3, -3.7, 0.9]), np.zeros(3), 64 / 2 / math.tan(0.46), 64)
    ring_oriented, inner_oriented = _ring_error(model, cam)
    model.oriented = False
    ring_flipped, inner_flipped = _ring_error(model, cam)
    # Flipping each normal to face the camera cancels the silhouette's tangential parts in the blend.
    assert ring_flipped > 1.3 * ring_oriented, (ring_flipped, ring_oriented)
    assert inner_oriented < inner_flipped + 0.5, (inner_oriented, inner_flipped)


def test_a_thin_part_seen_from_behind_still_faces_the_camera():
    model, p = disc_sphere(500)
    orient_normals(model, sphere_cameras(np.zeros(3), 1.0, 4.0, 20, 48), "cpu")
    far = torch.tensor([0.0, 0.0, -5.0])  # below the sphere: the top discs face away from it
    n = model.normals(far)
    to_cam = F.normalize(far - model.means.detach(), dim=-1)
    assert ((n * to_cam).sum(-1) >= -0.3 - 1e-5).all()


def test_the_ply_keeps_the_oriented_flag(tmp_path):
    model, _ = disc_sphere(200)
    model.save_ply(tmp_path / "plain.ply")
    assert not Gaussians.load_ply(tmp_path / "plain.ply").oriented
    model.oriented = True
    model.save_ply(tmp_path / "oriented.ply")
    assert ply_comments(tmp_path / "oriented.ply") == [ORIENTED_COMMENT]
    back = Gaussians.load_ply(tmp_path / "oriented.ply")
    assert back.oriented and torch.equal(back.quats, model.quats.detach())
    params, extra = read_ply(tmp_path / "oriented.ply")  # what a 3DGS viewer reads is unchanged
    assert params["means"].shape == (200, 3) and "metallic" in extra
