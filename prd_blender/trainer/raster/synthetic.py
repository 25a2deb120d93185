"""Random Gaussian scenes for tests and benchmarks (fresh inputs from a seed)."""

from __future__ import annotations

import torch


def random_scene(
    n: int, channels: int, width: int, height: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """N Gaussians in a 2 x 2 x 1 box 3 units in front of a camera that sees about all of it.

    Scales are log-normal around 0.05 units, i.e. a footprint of a few pixels at 128 px and mean
    screen radius ~10 px: denser and larger than a trained scene, so a harder case for speed.
    """
    g = torch.Generator().manual_seed(seed)
    f = 1.2 * width
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    scene = {
        "means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([2.0, 2.0, 1.0]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 3.0),
        "opacities": torch.sigmoid(torch.randn(n, generator=g)),
        "features": torch.randn(n, channels, generator=g),
        "viewmat": viewmat,
        "K": torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]),
    }
    return {k: v.to(dtype) for k, v in scene.items()}
