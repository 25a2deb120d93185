"""Writing distillation results into the hand-off folder: environment map, visibility, per-view maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .capture import View
from .shading.envmap import EnvironmentLight
from .shading.hdr_io import write_exr
from .shading.shade import linear_to_srgb
from .shading.visibility import VisibilityGrid
from .train.distill import DistillConfig, bounce_source, composite, shade_maps, trained_environment
from .train.gaussians import Gaussians
from .train.render import Camera, render_pbr_maps

MAP_NAMES = ("albedo", "roughness", "metallic", "normal", "progress", "phy", "render")


def write_png(path: Path, img: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """8-bit PNG of an image in [0, 1] (grey maps become RGB), with optional alpha."""
    img = np.clip(img, 0, 1)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    if alpha is not None:
        img = np.concatenate([img, np.clip(alpha, 0, 1)[..., None]], -1)
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(path)


@torch.no_grad()
def write_view_maps(
    model: Gaussians, light: EnvironmentLight, lut, vis: VisibilityGrid | None, views: list[View], cfg: DistillConfig,
    backend: str, background: tuple[float, float, float], folder: Path,
) -> list[dict]:
    """Per view: albedo (sRGB PNG), roughness / metallic / progress (grey PNG, Non-Color), world normal
    (PNG, n * 0.5 + 0.5), the physical render I_phy and the final blend, all with coverage as alpha."""
    folder.mkdir(parents=True, exist_ok=True)
    bg = torch.tensor(background, dtype=torch.float32)
    records = []
    sky, sun = trained_environment(light, cfg)
    source = bounce_source(model, cfg)
    for v in views:
        cam = Camera.from_view(v)
        maps = render_pbr_maps(model, cam, cfg.sh_degree, backend)
        sh = shade_maps(maps, sky, lut, vis, 4, cfg, sun, source)
        cov = maps["coverage"][..., 0].numpy()
        stem = Path(v.name).stem
        files = {}
        out = {
            "albedo": linear_to_srgb(maps["albedo"]).numpy(),
            "roughness": maps["roughness"].numpy(),
            "metallic": maps["metallic"].numpy(),
            "normal": (maps["normal"].numpy() * 0.5 + 0.5),
            "progress": maps["progress"].numpy(),
            "phy": sh["phy_display"].numpy(),
            "render": composite(sh["blend"], maps["coverage"], bg).numpy(),
        }
        for key, img in out.items():
            name = f"{stem}_{key}.png"
            write_png(folder / name, img, None if key == "render" else cov)
            files[key] = f"{folder.name}/{name}"
        records.append({"view": v.name, "files": files})
    return records


def write_environment(light: EnvironmentLight, path: Path, height: int = 256) -> None:
    """The recovered light as an equirectangular EXR in Blender's world convention (linear)."""
    write_exr(path, light.to_equirect(height).numpy().astype(np.float32))
