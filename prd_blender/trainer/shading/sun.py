"""A sun in an environment map, split off as a directional light with a ray-marched shadow.

Order-2 SH visibility is smooth: it cannot cast the hard shadow of a small, very bright source. Outdoor
HDRIs put much of their energy in the sun (``quarry_01``: half of it in 0.01 % of the texels), and there the
shading model's ceiling dropped by 9 dB on the diffuse benchmark object (docs/benchmarks.md). So, where a
map has a sun, ``split_sun`` takes it out of the map as one directional light (direction and irradiance at
normal incidence) and leaves the rest of the sky as an ``EnvironmentLight``; ``sun_radiance`` shades the
sun with the full GGX BRDF and a shadow traced through the visibility grid's density
(``VisibilityGrid.transmittance``). The split is for fixed lights (relighting, a known light): which texels
are the sun is not differentiable, so a learned light, whose sun could appear and vanish, is never split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..train.sh import sh_basis
from .envmap import EnvironmentLight, cube_texel_dirs, cube_texel_solid_angles

__all__ = ["Sun", "split_sun", "sun_radiance", "sun_sh"]

_LUMA = torch.tensor([0.2126, 0.7152, 0.0722])
# The GGX lobe of a point light is not narrower than the sun's disc (0.53 degrees across): roughness 0.08
# (alpha 0.0064) is a lobe of about that width. It also keeps D finite for roughness -> 0.
_MIN_ROUGHNESS = 0.08
# The disc's edge texels (part sun, part sky) join the sun above this fraction of the detection threshold. A
# tenth took in so much of a sunrise's glow that spruit_sunrise lost 2.4 dB on the diffuse object's shading
# ceiling; a quarter and the full threshold are within 0.05 dB there and under quarry_01.
EDGE = 0.25


@dataclass
class Sun:
    direction: torch.Tensor  # (3,) unit, from the scene towards the sun (Blender's world axes)
    irradiance: torch.Tensor  # (3,) linear irradiance on a surface facing the sun, unshadowed


def split_sun(light: EnvironmentLight, ratio: float = 50.0, radius_deg: float = 5.0
              ) -> tuple[Sun | None, EnvironmentLight]:
    """The light's sun and the sky without it; ``(None, light)`` where the map has none.

    A map has a sun where its brightest texel exceeds ``ratio`` times the mean luminance (on a 128 cube: the
    overcast pedestrian_overpass peaks at 26 times its mean, quarry_01's sun at 23,000, spruit_sunrise's at 560;
    blouberg_sunrise_2's low sun, at 49, stays in the map). Sun texels: within ``radius_deg`` (or three texels)
    of the brightest one and above ``EDGE`` times that threshold. Their radiance times solid angle is the
    sun's irradiance; in the sky left behind they take the mean of the other texels within the radius, so the
    sky keeps its glow around the sun and loses only the disc.
    Which texels are the sun is decided without gradient; the sun's irradiance and the sky are
    differentiable in the light (a known light's gain trains through both)."""
    cube = light.cube()
    res = light.resolution
    with torch.no_grad():
        dirs = cube_texel_dirs(res).to(cube.device)
        dw = cube_texel_solid_angles(res).to(cube.device)
        lum = cube.detach() @ _LUMA.to(cube.device)
        mean = float((lum * dw).sum()) / (4 * math.pi)
        peak = int(torch.argmax(lum))
        if ratio <= 0 or float(lum.reshape(-1)[peak]) <= ratio * mean:
            return None, light
        # at least three texels (90 / R degrees each) around the peak: a coarse cube smears the disc that far
        radius = max(radius_deg, 3 * 90.0 / res)
        near = (dirs @ dirs.reshape(-1, 3)[peak]) > math.cos(math.radians(radius))
        # the disc's edge texels, part sun and part sky, go with it (above EDGE times the detection threshold)
        sel = near & (lum > EDGE * ratio * mean)
        ring = near & ~sel
        weight = lum[sel] * dw[sel]
        direction = F.normalize((dirs[sel] * weight[:, None]).sum(0), dim=0)
    irradiance = (cube[sel] * dw[sel][:, None]).sum(0)
    fill = cube[ring].mean(0) if bool(ring.any()) else torch.full((3,), ratio * mean, device=cube.device)
    sky = torch.where(sel[..., None], fill, cube)
    return Sun(direction, irradiance), EnvironmentLight.from_cube(sky, light.mip_sizes, light.filter_eps)


def sun_sh(sun: Sun, order: int = 2) -> torch.Tensor:
    """SH (K, 3) of the sun as a delta of its irradiance: what adding it back to a light's SH adds."""
    return sh_basis(sun.direction[None], order)[0][:, None] * sun.irradiance[None]


def _ggx_d(n_dot_h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a2 = alpha * alpha
    return a2 / (math.pi * (n_dot_h * n_dot_h * (a2 - 1) + 1) ** 2)


def _smith_lambda(cos_t: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    c2 = cos_t.clamp(1e-4, 1.0) ** 2
    return (torch.sqrt(1 + a2 * (1 - c2) / c2) - 1) * 0.5


def sun_radiance(albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor, normal: torch.Tensor,
                 view_dir: torch.Tensor, sun: Sun, shadow: torch.Tensor) -> torch.Tensor:
    """Radiance (P, 3) the sun sends towards the camera: Lambert ``(1 - m) c / pi`` plus GGX (height-correlated
    Smith, Schlick Fresnel, ``F0 = 0.04 (1 - m) + c m``, alpha = roughness^2), times ``n . l``, the sun's
    irradiance and ``shadow`` (P,), its transmittance. Inputs as ``shade.shade``: (P, 3) and (P,) or (P, 1)."""
    n = F.normalize(normal, dim=-1)
    v = F.normalize(view_dir, dim=-1)
    l_dir = sun.direction.to(n.device, n.dtype)[None]
    r = roughness.reshape(-1, 1).clamp(_MIN_ROUGHNESS, 1.0)
    m = metallic.reshape(-1, 1)
    n_dot_l = (n * l_dir).sum(-1, keepdim=True)
    n_dot_v = (n * v).sum(-1, keepdim=True).clamp(1e-4, 1.0)
    h = F.normalize(v + l_dir, dim=-1)
    n_dot_h = (n * h).sum(-1, keepdim=True).clamp(0, 1)
    v_dot_h = (v * h).sum(-1, keepdim=True).clamp(0, 1)
    alpha = r * r
    a2 = alpha * alpha
    g = 1.0 / (1.0 + _smith_lambda(n_dot_v, a2) + _smith_lambda(n_dot_l, a2))
    f0 = 0.04 * (1 - m) + albedo * m
    fresnel = f0 + (1 - f0) * (1 - v_dot_h) ** 5
    # f_spec * n.l = D G F / (4 n.v n.l) * n.l
    spec = _ggx_d(n_dot_h, alpha) * g * fresnel / (4 * n_dot_v)
    diff = (1 - m) * albedo / math.pi * n_dot_l
    lit = (n_dot_l > 0).to(n.dtype)
    return lit * (diff + spec) * sun.irradiance.to(n.device, n.dtype)[None] * shadow.reshape(-1, 1)
