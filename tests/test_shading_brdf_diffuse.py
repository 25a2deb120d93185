"""BRDF table, SH diffuse irradiance with visibility, the shader and the tone maps."""

from __future__ import annotations

import math

import numpy as np
import torch
from sh_util import project_sh, sphere_quadrature

from prd_blender.trainer.shading.brdf_lut import compute_brdf_lut, get_brdf_lut, ggx_d, smith_g2
from prd_blender.trainer.shading.diffuse import (
    cosine_lobe_coeffs,
    diffuse_irradiance,
    gaunt_tensor,
    irradiance_sh,
    unoccluded_sh,
)
from prd_blender.trainer.shading.envmap import EnvironmentLight
from prd_blender.trainer.shading.shade import (
    aces_filmic,
    aces_filmic_inverse,
    linear_to_srgb,
    shade,
    srgb_to_linear,
    tonemap,
)
from prd_blender.trainer.shading.specular_occlusion import specular_visibility
from prd_blender.trainer.train.sh import sh_basis


def test_brdf_lut_ranges_and_limits(tmp_path):
    lut = get_brdf_lut(64, 512, cache_dir=tmp_path)
    assert (tmp_path / "brdf_lut_v1_64_512.npy").is_file()
    t = lut.table
    assert t.min() >= 0 and (t.sum(-1) <= 1.0 + 1e-3).all()
    a, b = lut.lookup(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]))
    assert abs(a[0] + b[0] - 1) < 0.01 and b[0] < 0.01  # smooth, normal view: F = F0, no loss
    assert b[1] > 0.5  # smooth, grazing: Fresnel towards 1 whatever F0
    assert a[2] + b[2] < 0.6  # rough, normal view: single-scattering energy loss
    # The table is deterministic: a recompute equals the cached file.
    assert np.allclose(compute_brdf_lut(64, 512), get_brdf_lut(64, 512, cache_dir=tmp_path).table.numpy())


def test_brdf_lut_matches_brute_force_integral():
    lut = get_brdf_lut(64, 1024, cache_dir=None)
    rng = np.random.default_rng(1)
    for rough, nv in ((0.5, 0.5), (0.8, 0.2)):
        alpha = rough**2
        v = np.array([math.sqrt(1 - nv * nv), 0, nv])
        # Uniform hemisphere sampling of l: an estimator independent of the table's GGX sampling.
        z, ph = rng.random(400_000), 2 * math.pi * rng.random(400_000)
        r = np.sqrt(1 - z * z)
        l_dir = np.stack([r * np.cos(ph), r * np.sin(ph), z], 1)
        h = l_dir + v
        h /= np.linalg.norm(h, axis=1, keepdims=True)
        fr = ggx_d(h[:, 2], alpha) * smith_g2(nv, z, alpha) / (4 * nv)  # times n.l / n.l
        fc = (1 - h @ v) ** 5
        ref_a = float(((1 - fc) * fr).mean() * 2 * math.pi)
        ref_b = float((fc * fr).mean() * 2 * math.pi)
        a, b = lut.lookup(torch.tensor(nv), torch.tensor(rough))
        print(f"LUT at roughness {rough}, n.v {nv}: ({float(a):.4f}, {float(b):.4f}) vs MC ({ref_a:.4f}, {ref_b:.4f})")
        assert abs(float(a) - ref_a) < 0.02 and abs(float(b) - ref_b) < 0.01


def test_gaunt_and_unoccluded_equals_classic_irradiance():
    g = gaunt_tensor(2)
    assert torch.allclose(g, g.permute(1, 0, 2)) and torch.allclose(g, g.permute(2, 1, 0))
    assert torch.allclose(g[0], torch.eye(9) / math.sqrt(4 * math.pi), atol=1e-6)
    n = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    light = torch.randn(9, 3)
    v1 = unoccluded_sh(2).expand(50, 9)
    assert torch.allclose(diffuse_irradiance(n, v1, light), irradiance_sh(n, light), atol=1e-5)
    assert diffuse_irradiance(n, torch.zeros(50, 9), light).abs().max() == 0
    # Order 3 too.
    light16 = torch.randn(16, 3)
    assert torch.allclose(diffuse_irradiance(n, unoccluded_sh(3).expand(50, 16), light16),
                          irradiance_sh(n, light16), atol=1e-5)


def test_triple_product_against_quadrature():
    """E = integral V L K_n with K_n the order-2 clamped-cosine lobe, by brute-force quadrature."""
    torch.manual_seed(0)
    dirs, w = sphere_quadrature(24, 48)
    y = sh_basis(dirs, 2)
    n = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1)
    v_sh = torch.randn(5, 9, dtype=torch.float64)
    l_sh = torch.randn(9, 3, dtype=torch.float64)
    kern = cosine_lobe_coeffs(n, 2) @ y.T  # (5, Q)
    ref = torch.einsum("pq,qc,pq,q->pc", v_sh @ y.T, y @ l_sh, kern, w)
    ours = diffuse_irradiance(n.float(), v_sh.float(), l_sh.float())
    assert torch.allclose(ours.double(), ref, atol=1e-4, rtol=1e-4)


def test_specular_visibility_open_sky_floor_and_wall():
    """Open sky and a bare floor (the surface's own horizon) read 1 for every reflection, grazing ones
    included. A wall on the +x side blocks mirror reflections towards it, not those away from it, and a
    rough lobe averages the two."""
    n = torch.tensor([[0.0, 0.0, 1.0]]).repeat(4, 1)
    refl = torch.nn.functional.normalize(torch.tensor([[0.0, 0, 1], [1, 0, 0.15], [1, 0, 1], [-1, 0, 1]]), dim=-1)
    for v in (project_sh(lambda d: torch.ones(len(d)), 2), project_sh(lambda d: d[:, 2] > 0, 2)):
        for r in (0.0, 0.5, 1.0):
            out = specular_visibility(v[None].repeat(4, 1), n, refl, torch.full((4,), r))
            assert torch.allclose(out, torch.ones_like(out), atol=0.02), (r, out)
    wall = project_sh(lambda d: (d[:, 2] > 0) & (d[:, 0] < 0.2), 2)[None].repeat(4, 1)
    mirror = specular_visibility(wall, n, refl, torch.zeros(4))[:, 0]
    rough = specular_visibility(wall, n, refl, torch.ones(4))[:, 0]
    assert mirror[2] < 0.6 and mirror[3] > 0.95  # towards the wall / away from it
    assert mirror[2] < rough[2] < mirror[3]
    rough_t = torch.full((4,), 0.9, requires_grad=True)
    specular_visibility(wall, n, refl, rough_t).sum().backward()
    assert rough_t.grad is not None and rough_t.grad.abs().sum() > 0


def test_constant_environment_gives_albedo():
    light = EnvironmentLight(16, init=1.0)
    lut = get_brdf_lut(64, 256, cache_dir=None)
    p = 20
    albedo = torch.rand(p, 3)
    n = torch.nn.functional.normalize(torch.randn(p, 3), dim=-1)
    out = shade(albedo, torch.full((p,), 0.5), torch.zeros(p), n, n, unoccluded_sh(2).expand(p, 9), light, lut)
    assert torch.allclose(out["diffuse"], albedo, atol=2e-3)  # E = pi, times albedo / pi
    out0 = shade(albedo, torch.full((p,), 0.5), torch.zeros(p), n, n, torch.zeros(p, 9), light, lut)
    assert out0["diffuse"].abs().max() == 0
    assert torch.allclose(out0["phy"], out0["specular"])
    # Metallic white, roughness 0, normal view, constant light 1: reflects everything (A + B ~ 1).
    out1 = shade(torch.ones(p, 3), torch.zeros(p), torch.ones(p), n, n, None, light, lut)
    assert torch.allclose(out1["phy"], torch.ones(p, 3), atol=0.02)


def test_shade_gradients():
    light = EnvironmentLight(16, init=(0.5, 0.7, 1.0))
    lut = get_brdf_lut(64, 256, cache_dir=None)
    p = 32
    albedo = torch.rand(p, 3, requires_grad=True)
    rough = torch.rand(p, requires_grad=True)
    metal = torch.rand(p, requires_grad=True)
    n = torch.nn.functional.normalize(torch.randn(p, 3), dim=-1)
    v = torch.nn.functional.normalize(n + 0.3 * torch.randn(p, 3), dim=-1)
    out = shade(albedo, rough, metal, n, v, unoccluded_sh(2).expand(p, 9), light, lut)
    out["phy"].sum().backward()
    for t in (albedo, rough, metal, light.log_radiance):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_tone_maps():
    x = torch.linspace(0, 4, 401, requires_grad=True)
    y = linear_to_srgb(x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert abs(float(linear_to_srgb(torch.tensor(1.0))) - 1) < 1e-6
    assert abs(float(linear_to_srgb(torch.tensor(0.18))) - 0.4614) < 1e-3
    assert torch.allclose(srgb_to_linear(y.detach()), x.detach(), atol=1e-5)
    a = aces_filmic(x.detach())
    assert a.min() >= 0 and a.max() <= 1 and (a[1:] >= a[:-1]).all()
    m = x.detach() < 7
    assert torch.allclose(aces_filmic_inverse(a)[m], x.detach()[m], atol=1e-3)
    assert abs(tonemap(torch.tensor([2.0])).item() - 1) < 1e-6 and tonemap(torch.tensor([2.0]), "aces").item() < 1
