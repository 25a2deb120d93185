"""How close a learned environment is to the true one, where a diffuse surface can tell: the irradiance.

Both lights are compared through their order-2 SH irradiance E(n) (what the diffuse term shades with) over
normals spread evenly on the sphere. The light's overall level and colour trade off against the albedo, so a
per-channel scale is fitted first (least squares), as for the relighting and albedo PSNRs. Two figures:
``light_irradiance_error``, the relative RMS error of E after the fit (mean over channels; 0 is exact), and
``light_irradiance_corr``, the correlation of the two luminance patterns over the normals, after the fit (1: the
light comes from the right directions, whatever its contrast).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..shading.diffuse import cosine_lobe_coeffs
from ..shading.envmap import EnvironmentLight

__all__ = ["fibonacci_normals", "light_irradiance_score"]

_LUMINANCE = torch.tensor([0.2126, 0.7152, 0.0722])


def fibonacci_normals(n: int = 4096) -> torch.Tensor:
    """(n, 3) unit vectors spread evenly over the sphere (Fibonacci lattice): deterministic, no clumping."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1).float()


@torch.no_grad()
def light_irradiance_score(learned: EnvironmentLight, true: EnvironmentLight, n: int = 4096) -> dict:
    """``light_irradiance_error`` and ``light_irradiance_corr`` of ``learned`` against ``true`` (module doc)."""
    lobes = cosine_lobe_coeffs(fibonacci_normals(n), 2)
    e_true = lobes @ true.sh_coeffs(2)
    e = lobes @ learned.sh_coeffs(2)
    scale = (e * e_true).sum(0) / (e * e).sum(0).clamp_min(1e-12)
    err = (e * scale - e_true).norm(dim=0) / e_true.norm(dim=0).clamp_min(1e-12)
    lum_true, lum = (e_true @ _LUMINANCE).numpy(), (e * scale @ _LUMINANCE).numpy()  # after the fit: tint-blind
    # a uniform light has no pattern to correlate (only float rounding, ~1e-7 of its level): uncorrelated
    patterned = all(x.std() > 1e-5 * abs(x.mean()) for x in (lum, lum_true))
    corr = float(np.corrcoef(lum_true, lum)[0, 1]) if patterned else 0.0
    return {"light_irradiance_error": float(err.mean()), "light_irradiance_corr": corr}
