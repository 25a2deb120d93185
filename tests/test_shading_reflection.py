"""Specular inter-reflection traced through the visibility grid: the hit, its radiance, and a mirror that shows
the object instead of the sky."""

from __future__ import annotations

import math

import numpy as np
import torch

from prd_blender.trainer.shading.brdf_lut import get_brdf_lut
from prd_blender.trainer.shading.envmap import EnvironmentLight
from prd_blender.trainer.shading.reflection import BounceSource, hit_radiance, trace_reflections
from prd_blender.trainer.shading.visibility import VisibilityGrid, bake_visibility
from prd_blender.trainer.train.distill import DistillConfig, shade_maps

GREY = 0.5  # the uniform environment's radiance


def _wall_and_floor(owners: bool = True) -> tuple[VisibilityGrid, BounceSource]:
    """Two opaque walls of flat Gaussians: A (red, Lambertian) in the plane x = 1, B (white) in the plane
    y = 1, each over [-1, 1] in its other two axes. Gaussians 0..N-1 are A's, N..2N-1 are B's."""
    s = torch.linspace(-1, 1, 33)
    g1, g2 = (t.reshape(-1) for t in torch.meshgrid(s, s, indexing="ij"))
    one = torch.ones_like(g1)
    wall_a = torch.stack([one, g1, g2], -1)
    wall_b = torch.stack([g1, one, g2], -1)
    means = torch.cat([wall_a, wall_b])
    # flat along x for A (quaternion identity, thin first axis) and along y for B (thin second axis)
    scales = torch.cat([torch.tensor([0.002, 0.06, 0.06]).expand(len(g1), 3),
                        torch.tensor([0.06, 0.002, 0.06]).expand(len(g1), 3)])
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(means), 4)
    grid = bake_visibility(means, scales, quats, torch.full((len(means),), 0.99), resolution=48,
                           bounds=(np.full(3, -1.5), np.full(3, 1.5)), owners=owners)
    n = len(g1)
    axes = torch.cat([torch.tensor([1.0, 0.0, 0.0]).expand(n, 3), torch.tensor([0.0, 1.0, 0.0]).expand(n, 3)])
    albedo = torch.cat([torch.tensor([0.8, 0.05, 0.05]).expand(n, 3), torch.full((n, 3), 0.8)])
    source = BounceSource(means, axes.clone(), albedo.clone().requires_grad_(True), torch.ones(2 * n, 1),
                          torch.zeros(2 * n, 1))
    return grid, source


def test_trace_hits_the_wall_in_front_and_names_its_gaussian() -> None:
    grid, source = _wall_and_floor()
    n = len(source.means) // 2
    assert grid.owner is not None and (grid.owner >= 0).any()
    start = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, -0.3, 0.4]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    trans, gauss = trace_reflections(grid, start, dirs)
    assert trans[0] < 0.01 and trans[1] < 0.01  # into wall A, into wall B
    assert trans[2] > 0.99 and trans[3] > 0.99  # away from both
    assert 0 <= gauss[0] < n and n <= gauss[1] < 2 * n
    assert gauss[2] == -1 and gauss[3] == -1
    # the hit is the Gaussian in front of the ray, not one anywhere on the wall: within a grid cell or two
    hit = source.means[gauss[0]]
    assert abs(float(hit[0]) - 1) < 2 * grid.cell and float(hit[1:].abs().max()) < 3 * grid.cell


def test_a_white_lambertian_hit_sends_back_the_uniform_light() -> None:
    """Under a uniform environment L, an unoccluded white Lambertian reflects L (E = pi L, times albedo / pi),
    plus its dielectric specular (F0 = 0.04): within a few per cent above L."""
    n = 4
    source = BounceSource(torch.zeros(n, 3), torch.tensor([[0.0, 0.0, 1.0]]).expand(n, 3), torch.ones(n, 3),
                          torch.ones(n, 1), torch.zeros(n, 1))
    empty = VisibilityGrid(np.full(3, -10.0), 20.0, np.full((1, 1, 1), -1, np.int32),
                           np.zeros((0, 9), np.float32), 2)
    light = EnvironmentLight(16, init=GREY)
    with torch.no_grad():
        dirs = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0], [0.3, 0.0, -1.0], [0.0, 0.5, -1.0],
                                                           [0.0, 0.0, 1.0]]), dim=-1)  # the last hits its back
        rad = hit_radiance(source, torch.arange(n), dirs, light, light.prefiltered_levels(), get_brdf_lut(), empty,
                           2.5)
    assert (rad >= GREY * 0.98).all() and (rad <= GREY * 1.08).all(), rad


def _mirror_pixel(albedo: float = 0.9) -> dict[str, torch.Tensor]:
    """One pixel of a smooth metal at the origin, its normal and the view along +x: it mirrors wall A."""
    x = torch.tensor([[[1.0, 0.0, 0.0]]])
    return {"albedo": torch.full((1, 1, 3), albedo), "roughness": torch.full((1, 1, 1), 0.1),
            "metallic": torch.ones(1, 1, 1), "normal": x, "view": x, "position": torch.zeros(1, 1, 3),
            "coverage": torch.ones(1, 1, 1), "progress": torch.ones(1, 1, 1), "raw": torch.zeros(1, 1, 3)}


def test_a_smooth_metal_mirrors_the_red_wall_only_when_traced() -> None:
    """The mirror looks straight into red wall A under a white light. Traced, it shows the wall: red, at the
    wall's own radiance (0.8 / 0.05 of L) times the metal's F0, and the gradient reaches the wall's albedo.
    Untraced, the blocked lobe shows the assumed blocker made of the mirror's own (grey) material."""
    grid, source = _wall_and_floor()
    light = EnvironmentLight(32, init=GREY)
    lut = get_brdf_lut()
    maps = _mirror_pixel()
    traced = shade_maps(maps, light, lut, grid, 4, DistillConfig(reflection_trace=True), source=source)["phy"][0, 0]
    with torch.no_grad():
        plain = shade_maps(maps, light, lut, grid, 4, DistillConfig(), source=source)["phy"][0, 0]
    assert float(traced[0].detach()) > 5 * float(traced[1].detach()), traced  # red
    assert abs(float(plain[0] - plain[1])) < 0.1 * float(plain[0]), plain  # grey
    # the wall's radiance is about 0.8 L in red (half its sky is the other wall, which is lit and white); the
    # mirror's F0 0.9 times the split-sum scale at normal incidence and roughness 0.1 (about 1)
    assert 0.5 * GREY < float(traced[0].detach()) < 0.9 * GREY, traced
    traced.sum().backward()
    grad = source.albedo.grad
    assert grad is not None and grad.abs().sum() > 0
    assert float(grad[: len(grad) // 2, 0].abs().sum()) > 10 * float(grad[len(grad) // 2:].abs().sum())


def test_rough_surfaces_are_not_traced() -> None:
    """Above ``reflection_roughness`` the SH occlusion and the assumed blocker stay as they were."""
    grid, source = _wall_and_floor()
    light = EnvironmentLight(32, init=GREY)
    maps = _mirror_pixel()
    maps["roughness"] = torch.full((1, 1, 1), 0.6)
    with torch.no_grad():
        on = shade_maps(maps, light, get_brdf_lut(), grid, 4, DistillConfig(reflection_trace=True), source=source)
        off = shade_maps(maps, light, get_brdf_lut(), grid, 4, DistillConfig(), source=source)
    assert torch.equal(on["phy"], off["phy"])


def test_the_grid_keeps_its_owners_on_disk(tmp_path) -> None:
    grid, _ = _wall_and_floor()
    grid.save(str(tmp_path / "vis.npz"))
    back = VisibilityGrid.load(str(tmp_path / "vis.npz"))
    assert back.owner is not None and np.array_equal(back.owner, grid.owner)
    # kept only when asked (the grid costs as much as the density), with the same density either way
    plain, _ = _wall_and_floor(owners=False)
    assert plain.owner is None and np.array_equal(plain.density, grid.density)
    # a grid saved before owners were kept still loads, and its traces hit nothing by name
    old = VisibilityGrid(grid.origin, grid.cell, grid.index, grid.coeffs, grid.order, grid.density)
    trans, gauss = trace_reflections(old, torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]))
    assert trans[0] < 0.01 and gauss[0] == -1
    assert math.isfinite(float(trans[0]))
