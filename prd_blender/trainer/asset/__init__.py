"""From distilled Gaussians to a deployable asset: surface, UVs, baked PBR textures, glTF (DESIGN.md §3 end).

Public entry point: ``bake_asset(out_dir, quality, texture_size)`` (see ``asset.bake``), also ``prd mesh OUT``.
Pieces: ``surface`` (views -> TSDF -> marching cubes -> clean-up -> simplify), ``uv`` (xatlas unwrap, MikkTSpace-
style tangents), ``bake`` (texel -> views back-projection, dilation, PNGs), ``gltf`` (GLB writer/reader, PLY).
"""

from __future__ import annotations

QUALITY_LEVELS = ("preview", "standard", "high")

__all__ = ["QUALITY_LEVELS", "bake_asset"]


def bake_asset(*args, **kwargs) -> dict:  # lazy: keep ``import prd_blender.trainer.asset`` cheap
    from .bake import bake_asset as _bake

    return _bake(*args, **kwargs)
