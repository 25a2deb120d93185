"""The one-bounce indirect term: furnace invariant, which way the blocker faces, and its use in shade_maps."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from sh_util import project_sh

from prd_blender.trainer.shading.diffuse import diffuse_irradiance, irradiance_sh
from prd_blender.trainer.shading.indirect import bounce_sh, indirect_irradiance, indirect_radiance
from prd_blender.trainer.train.sh import sh_basis


def _uniform_light(order: int = 2) -> torch.Tensor:
    return project_sh(lambda d: torch.ones(len(d)), order).float()[:, None].expand(-1, 3).contiguous()


def test_furnace_unit_blockers_give_back_the_unoccluded_irradiance():
    """Under a uniform sky a unit-albedo blocker is as bright as the sky it hides, so direct + indirect must
    equal the unoccluded irradiance (pi) whatever the visibility."""
    l_sh = _uniform_light()
    torch.manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    walls = [lambda d: d[:, 0] < 0.3, lambda d: d[:, 2] < -0.5, lambda d: (d[:, 1] > 0) & (d[:, 2] > 0.2)]
    for wall in walls:
        v_sh = project_sh(lambda d, w=wall: (~w(d)).float(), 2).float().expand(64, -1)
        direct = diffuse_irradiance(n, v_sh, l_sh)
        total = direct + indirect_irradiance(n, v_sh, l_sh)
        assert (direct < math.pi - 0.05).any()  # the wall does block something
        # exact in SH; only where order-2 ringing lifts the direct term above pi does the clamp show (0.025)
        assert torch.allclose(total, torch.full_like(total, math.pi), atol=0.03)
    assert torch.allclose(indirect_radiance(n, l_sh), torch.ones(64, 3), atol=1e-4)


def test_blocker_faces_back_towards_the_point():
    """Sky lit from above only: a blocker below the point faces up and is bright, one above faces down and
    is dark; bounce_sh is the SH of the same function that indirect_radiance evaluates."""
    l_sh = project_sh(lambda d: d[:, 2].clamp_min(0) * 3, 2).float()[:, None].expand(-1, 3).contiguous()
    up, down = torch.tensor([[0.0, 0, 1]]), torch.tensor([[0.0, 0, -1]])
    assert indirect_radiance(down, l_sh)[0, 0] > 5 * indirect_radiance(up, l_sh)[0, 0]
    dirs = torch.nn.functional.normalize(torch.randn(32, 3), dim=-1)
    from_sh = sh_basis(dirs, 2).float() @ bounce_sh(l_sh)
    assert torch.allclose(from_sh, irradiance_sh(-dirs, l_sh) / math.pi, atol=1e-5)


def test_shade_maps_indirect_brightens_only_where_the_sky_is_blocked():
    """In shade_maps, ``indirect`` adds light to a pixel under a wall and leaves an open pixel alone; with the
    specular occlusion on, a metal mirror facing the wall gets the bounce instead of black."""
    from prd_blender.trainer.shading.brdf_lut import get_brdf_lut
    from prd_blender.trainer.shading.envmap import EnvironmentLight
    from prd_blender.trainer.shading.visibility import VisibilityGrid
    from prd_blender.trainer.train.distill import DistillConfig, shade_maps

    def grid(visible):
        coeffs = project_sh(visible, 2).numpy()[None]
        return VisibilityGrid(np.full(3, -10.0), 20.0, np.zeros((1, 1, 1), np.int32), coeffs, 2)

    walled, open_sky = grid(lambda d: (d[:, 2] > 0) & (d[:, 0] < 0.2)), grid(lambda d: d[:, 2] > 0)
    view = torch.nn.functional.normalize(torch.tensor([[[-1.0, 0, 1]]]), dim=-1)  # reflects towards +x
    maps = {"albedo": torch.full((1, 1, 3), 0.8), "roughness": torch.full((1, 1, 1), 0.1),
            "metallic": torch.zeros(1, 1, 1), "normal": torch.tensor([[[0.0, 0, 1]]]), "view": view,
            "position": torch.zeros(1, 1, 3), "progress": torch.ones(1, 1, 1), "raw": torch.zeros(1, 1, 3)}
    light, lut = EnvironmentLight(16, init=1.0), get_brdf_lut(64, 256, cache_dir=None)
    cfg = DistillConfig(visibility_offset=0.0, specular_visibility=False, indirect=0.0)
    on = dataclasses.replace(cfg, indirect=1.0)
    for mats in (maps, {**maps, "metallic": torch.ones(1, 1, 1)}):
        for c_off, c_on in ((cfg, on), (dataclasses.replace(cfg, specular_visibility=True),
                                        dataclasses.replace(on, specular_visibility=True))):
            before = shade_maps(mats, light, lut, walled, 4, c_off)["phy"]
            after = shade_maps(mats, light, lut, walled, 4, c_on)["phy"]
            free = shade_maps(mats, light, lut, open_sky, 4, c_off)["phy"]
            if mats["metallic"].item() == 0 or c_on.specular_visibility:
                assert (after > before * 1.03).all()
                assert (after < free * 1.05).all()  # the bounce never outshines the sky it replaces
            assert torch.allclose(shade_maps(mats, light, lut, open_sky, 4, c_on)["phy"], free, rtol=0.03)
            assert torch.allclose(shade_maps(mats, light, lut, None, 4, c_on)["phy"],
                                  shade_maps(mats, light, lut, None, 4, c_off)["phy"])
