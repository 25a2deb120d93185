"""``prd relight``: render the distilled Gaussians' physical term I_phy under any equirectangular HDRI."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .pipeline import load_distilled
from .raster import choose_backend
from .results import write_png
from .shading.brdf_lut import get_brdf_lut
from .shading.envmap import EnvironmentLight, rotated_environment
from .shading.hdr_io import read_image
from .train.distill import bounce_source, relight_environment, shade_maps
from .train.render import Camera, render_pbr_maps


def camera_from_record(rec: dict) -> Camera:
    K = torch.tensor([[rec["fx"], 0, rec["cx"]], [0, rec["fy"], rec["cy"]], [0, 0, 1.0]], dtype=torch.float32)
    w2c = torch.tensor(rec["world_to_cam_opencv"], dtype=torch.float32)
    return Camera(
        name=rec["name"], viewmat=w2c, K=K, width=rec["width"], height=rec["height"],
        centre=torch.linalg.inv(w2c)[:3, 3], image=torch.zeros(rec["height"], rec["width"], 3), mask=None,
    )


@torch.no_grad()
def run_relight(
    out: Path, hdri: Path, *, rotation: float = 0.0, strength: float = 1.0, views: str = "test",
    dest: Path | None = None, device: str = "auto",
) -> list[Path]:
    """Render I_phy (tone-mapped like the capture) for the chosen views; returns the written PNG paths.

    ``views``: "test", "train", "all" or comma-separated view names from cameras.json.
    """
    cfg, model, _, vis = load_distilled(out)
    env = rotated_environment(read_image(hdri), rotation, strength)
    light, sun = relight_environment(EnvironmentLight(cfg.light_resolution, init=env), cfg)
    cams = json.loads((out / "cameras.json").read_text(encoding="utf-8"))["cameras"]
    if views in ("test", "train"):
        chosen = [c for c in cams if c["split"] == views]
    elif views == "all":
        chosen = cams
    else:
        names = set(views.split(","))
        chosen = [c for c in cams if c["name"] in names or Path(c["name"]).stem in names]
    if not chosen:
        raise ValueError(f"no views match {views!r} (the run has {len(cams)} cameras)")
    backend, _ = choose_backend(device)
    dest = dest or out / "relight" / Path(hdri).stem
    dest.mkdir(parents=True, exist_ok=True)
    lut = get_brdf_lut()
    source = bounce_source(model, cfg)
    paths = []
    for rec in chosen:
        cam = camera_from_record(rec)
        maps = render_pbr_maps(model, cam, cfg.sh_degree, backend)
        img = shade_maps(maps, light, lut, vis, 4, cfg, sun, source)["phy_display"]
        path = dest / f"{Path(rec['name']).stem}.png"
        write_png(path, img.numpy(), maps["coverage"][..., 0].numpy())
        paths.append(path)
    return paths
