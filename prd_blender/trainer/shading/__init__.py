"""Physically based shading for the distillation stages (torch, trainer side; never imports bpy).

- ``hdr_io``: Radiance .hdr and OpenEXR reading, EXR writing.
- ``envmap``: Blender's equirect convention, cubemaps, the learnable prefiltered ``EnvironmentLight``.
- ``brdf_lut``: the split-sum BRDF table, computed by the project.
- ``diffuse``: irradiance with visibility in SH (Gaunt triple product).
- ``visibility``: visibility SH baked on a grid from the Gaussians.
- ``specular_occlusion``: how much of the reflection lobe that visibility leaves open.
- ``indirect``: one bounce off the object itself where the visibility blocks the sky.
- ``shade``: the deferred shader and tone maps.
"""

from .brdf_lut import BrdfLut, get_brdf_lut
from .diffuse import diffuse_irradiance, irradiance_sh
from .envmap import EnvironmentLight, cubemap_to_equirect, equirect_to_cubemap, sample_cube, sample_equirect
from .hdr_io import read_exr, read_hdr, read_image, write_exr
from .shade import aces_filmic, linear_to_srgb, reflect, shade, srgb_to_linear, tonemap
from .visibility import VisibilityGrid, bake_visibility

__all__ = [
    "BrdfLut", "get_brdf_lut", "diffuse_irradiance", "irradiance_sh", "EnvironmentLight", "cubemap_to_equirect",
    "equirect_to_cubemap", "sample_cube", "sample_equirect", "read_exr", "read_hdr", "read_image", "write_exr",
    "aces_filmic", "linear_to_srgb", "reflect", "shade", "srgb_to_linear", "tonemap", "VisibilityGrid",
    "bake_visibility",
]
