"""The sun split off a fixed environment: finding it, its GGX shading against the split-sum table, its shadow."""

from __future__ import annotations

import math

import numpy as np
import torch

from prd_blender.trainer.shading.brdf_lut import get_brdf_lut
from prd_blender.trainer.shading.envmap import EnvironmentLight, equirect_dirs
from prd_blender.trainer.shading.sun import Sun, split_sun, sun_radiance, sun_sh
from prd_blender.trainer.shading.visibility import VisibilityGrid, bake_visibility
from prd_blender.trainer.train.distill import DistillConfig, relight_environment, shade_maps

SUN_DIR = torch.nn.functional.normalize(torch.tensor([0.6, -0.5, 0.35]), dim=0)
SUN_RADIUS_DEG = 1.0
SUN_RADIANCE = 4000.0


def _sky_with_sun(height: int = 256) -> np.ndarray:
    """A blue-ish gradient sky (Blender's equirect) with a warm disc of SUN_RADIUS_DEG around SUN_DIR."""
    d = equirect_dirs(height, 2 * height)
    sky = (0.4 + 0.3 * d[..., 2:3].clamp_min(0)) * torch.tensor([0.7, 0.85, 1.0])
    disc = (d @ SUN_DIR) > math.cos(math.radians(SUN_RADIUS_DEG))
    sky[disc] = SUN_RADIANCE * torch.tensor([1.0, 0.9, 0.7])
    return sky.numpy()


def test_split_sun_finds_the_disc_and_keeps_the_energy() -> None:
    with torch.no_grad():
        whole = EnvironmentLight(64, init=_sky_with_sun())
        sun, sky = split_sun(whole)
        assert sun is not None
        angle = math.degrees(math.acos(min(1.0, float(sun.direction @ SUN_DIR))))
        assert angle < 0.5, angle
        # irradiance of the disc at normal incidence: radiance x solid angle of the map's disc texels
        img = torch.from_numpy(_sky_with_sun())
        rows = (torch.arange(img.shape[0]) + 0.5) / img.shape[0] * math.pi
        d_omega = (2 * math.pi / img.shape[1]) * (math.pi / img.shape[0]) * torch.sin(rows)[:, None]
        expected = float((img[..., 0] * d_omega * (img[..., 0] > 100)).sum())
        assert abs(expected / (SUN_RADIANCE * 2 * math.pi * (1 - math.cos(math.radians(SUN_RADIUS_DEG)))) - 1) < 0.2
        assert abs(float(sun.irradiance[0]) / expected - 1) < 0.03, (sun.irradiance, expected)
        assert abs(float(sun.irradiance[2] / sun.irradiance[0]) - 0.7) < 0.02  # its colour
        # what the sun takes out is what the sky lost: order-0 SH (total flux) adds up
        total = sky.sh_coeffs(2)[0] + sun_sh(sun)[0]
        assert torch.allclose(total, whole.sh_coeffs(2)[0], rtol=0.02)
        assert float(sky.cube().max()) < 2.0  # no sun left in the sky
        # a map without a sun (the same gradient, no disc) is left whole
        plain = EnvironmentLight(64, init=_sky_with_sun() * 0 + 0.5)
        none, same = split_sun(plain)
        assert none is None and same is plain
        assert split_sun(whole, ratio=0)[0] is None  # 0 turns the split off


def _rotations_onto(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) taking unit vectors a (N, 3) onto the unit vector b (3,) (Rodrigues)."""
    v = torch.cross(a, b.expand_as(a), dim=-1)
    c = (a * b).sum(-1)
    vx = torch.zeros(len(a), 3, 3, dtype=a.dtype)
    vx[:, 0, 1], vx[:, 0, 2], vx[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    vx = vx - vx.transpose(1, 2)
    return torch.eye(3, dtype=a.dtype) + vx + vx @ vx / (1 + c)[:, None, None]


def test_sun_brdf_integrates_to_the_split_sum_table() -> None:
    """Integrated over every light direction, the sun's GGX reflectance is the directional albedo the split-sum
    table holds: F0 A + B for a metal, plus the albedo itself for a dielectric's Lambert term."""
    lut = get_brdf_lut()
    i = torch.arange(400_000, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / len(i)
    phi = i * math.pi * (3 - math.sqrt(5))
    dirs = torch.stack([torch.sqrt(1 - z * z) * torch.cos(phi), torch.sqrt(1 - z * z) * torch.sin(phi), z], -1)
    d_omega = 4 * math.pi / len(dirs)
    # one sun, many pixels: pixel k sees the frame (n, v) turned so that light direction k lands on the sun
    sun_dir = torch.nn.functional.normalize(torch.tensor([0.123, 0.456, 0.789], dtype=torch.float64), dim=0)
    rot = _rotations_onto(dirs, sun_dir)
    sun = Sun(direction=sun_dir.float(), irradiance=torch.ones(3))
    n = (rot @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    albedo = torch.tensor([0.9, 0.6, 0.3])
    for rough, metal, n_dot_v in ((0.5, 1.0, 0.8), (0.35, 1.0, 0.5), (0.7, 0.0, 0.9)):
        v = (rot @ torch.tensor([math.sqrt(1 - n_dot_v**2), 0.0, n_dot_v], dtype=torch.float64)).float()
        out = sun_radiance(albedo.expand(len(n), 3), torch.full((len(n),), rough), torch.full((len(n),), metal),
                           n, v, sun, torch.ones(len(n)))
        total = out.double().sum(0) * d_omega
        a, b = lut.lookup(torch.tensor(n_dot_v), torch.tensor(rough))
        f0 = 0.04 * (1 - metal) + albedo * metal
        expected = (f0 * a + b + (1 - metal) * albedo).double()
        assert torch.allclose(total, expected, rtol=0.03), (rough, metal, total, expected)


def _slab() -> VisibilityGrid:
    """A grid baked from an opaque horizontal slab of flat Gaussians at z = 0 over [-1, 1]^2."""
    xs = torch.linspace(-1, 1, 41)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.zeros(gx.numel())], -1)
    scales = torch.tensor([0.05, 0.05, 0.002]).expand(len(means), 3)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(means), 4)
    opac = torch.full((len(means),), 0.99)
    box = (np.full(3, -1.2), np.full(3, 1.2))
    return bake_visibility(means, scales, quats, opac, resolution=48, bounds=box)


def test_transmittance_is_a_hard_shadow_under_the_slab() -> None:
    grid = _slab()
    below = torch.tensor([[0.0, 0.0, -0.3], [0.4, -0.3, -0.5]])
    above = torch.tensor([[0.0, 0.0, 0.3]])
    up, down, side = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    assert (grid.transmittance(below, up) < 0.01).all()
    assert (grid.transmittance(below, down) > 0.99).all()
    assert (grid.transmittance(above, up) > 0.99).all()
    assert (grid.transmittance(below, side) > 0.99).all()
    # under the slab's edge a slanted sun still reaches the point: 0.4 below, 45 degrees up towards +x, the
    # ray crosses z = 0 at x = 1.25, past the slab (which ends at 1 + its Gaussians' 0.05)
    edge = torch.tensor([[0.85, 0.0, -0.4]])
    assert float(grid.transmittance(edge, torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 1.0]), dim=0))) > 0.9
    # a grid without a density (saved before it was kept) answers from its SH visibility (baked only near the
    # surface, so read 2.5 cells below it), smooth but on the right side
    old = VisibilityGrid(grid.origin, grid.cell, grid.index, grid.coeffs, grid.order)
    near = torch.tensor([[0.0, 0.0, -2.5 * grid.cell]])
    assert 0 <= float(old.transmittance(near, up)) < 0.3 and float(old.transmittance(near, down)) > 0.7


def test_grid_keeps_its_density_on_disk(tmp_path) -> None:
    grid = _slab()
    grid.save(str(tmp_path / "vis.npz"))
    back = VisibilityGrid.load(str(tmp_path / "vis.npz"))
    assert back.density is not None and np.array_equal(back.density, grid.density)


def test_shade_maps_casts_the_sun_shadow_and_only_there() -> None:
    """Two pixels on the floor below the slab's edge, one in its shadow: with the sun split off they differ by
    the sun's light; with the whole map in the split sum (sun_ratio 0) the smooth visibility barely tells them
    apart. The sky's share is the same either way."""
    grid = _slab()
    cfg = DistillConfig(visibility_resolution=48, light_resolution=64)
    env = _sky_with_sun()
    whole = EnvironmentLight(64, init=env)
    sky, sun = relight_environment(whole, cfg)
    assert sun is not None and sun.direction[2] > 0
    # the floor at z = -0.4, lit from SUN_DIR (up and towards +x, -y): a point under the slab's centre is in
    # shade, one well outside the slab is not
    pos = torch.tensor([[[0.0, 0.0, -0.4], [3.0, -2.5, -0.4]]])
    maps = {"albedo": torch.full((1, 2, 3), 0.5), "roughness": torch.full((1, 2, 1), 0.9),
            "metallic": torch.zeros(1, 2, 1), "normal": torch.tensor([[[0.0, 0.0, 1.0]] * 2]),
            "view": torch.tensor([[[0.0, 0.0, 1.0]] * 2]), "position": pos,
            "progress": torch.ones(1, 2, 1), "raw": torch.zeros(1, 2, 3)}
    lut = get_brdf_lut()
    with torch.no_grad():
        split = shade_maps(maps, sky, lut, grid, 4, cfg, sun)["phy"][0]
        plain = shade_maps(maps, whole, lut, grid, 4, cfg)["phy"][0]
    # the lit pixel gains the sun's Lambert term: 0.5 / pi * E * n.l (plus a little specular)
    lit_sun = 0.5 / math.pi * sun.irradiance * float(sun.direction[2])
    assert torch.allclose(split[1] - split[0], lit_sun, rtol=0.15), (split, lit_sun)
    assert (plain[1] - plain[0]).sum() < 0.5 * (split[1] - split[0]).sum()
