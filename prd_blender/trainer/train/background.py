"""A training view re-composited over other background colours (stage 1's and stages 2-4's ``random_background``,
stages 2-4's ``paired_background``).

Over one fixed colour, Gaussians that cover more than the object's true silhouette show that colour, and the
radiance (then the albedo) takes it up; a colour drawn anew each iteration, or the view scored over black and over
white at once, can only be matched by the true coverage.
"""

from __future__ import annotations

import dataclasses

import torch

from .render import Camera


def random_background(cam: Camera, bg: torch.Tensor, seed: int, it: int) -> tuple[Camera, torch.Tensor]:
    """The view over a random colour, and the colour. ``cam.image`` is the capture composited over ``bg`` through
    ``cam.mask`` (its alpha). The colour comes from the seed and iteration alone, so a resumed run draws the same.
    A view without alpha cannot be re-composited: it comes back as it is, with ``bg``."""
    if cam.mask is None:
        return cam, bg
    colour = torch.rand(3, generator=torch.Generator().manual_seed(seed * 1_000_003 + it))
    return dataclasses.replace(cam, image=_over(cam, bg, colour)), colour


def _over(cam: Camera, bg: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """The view's image (composited over ``bg`` through its alpha) over ``colour`` instead."""
    return cam.image + (1 - cam.mask)[..., None] * (colour - bg)  # = premultiplied + (1 - alpha) * colour


def paired_backgrounds(cam: Camera, bg: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(colour, the view's image over it) for black and for white: the two extremes of every colour a random
    background could draw, scored together each iteration, so the coverage is asked for without the draw's noise.
    A view without alpha keeps its one background: ``[(bg, cam.image)]``."""
    if cam.mask is None:
        return [(bg, cam.image)]
    colours = (torch.zeros(3), torch.ones(3))
    return [(colour, _over(cam, bg, colour)) for colour in colours]
