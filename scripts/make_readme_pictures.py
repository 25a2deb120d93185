"""Make the README's "What you get" pictures from a finished run folder (after ``bash scripts/demo.sh``).

    python scripts/make_readme_pictures.py [RUN_DIR=out/sample] [--hdri-dir ../shared/data/hdri]
        [--hdris quarry_01_1k,moonless_golf_1k] [--dest docs/images] [--samples 64] [--scale 200]

Writes into ``--dest`` (each kept small, well under 150 KB):
- ``capture.jpg``: a contact sheet of input views;
- ``maps.png``: the recovered material of one view from ``maps/`` (albedo, roughness, metallic, normal, the
  physical render);
- ``relit_<hdri>.jpg``: the imported mesh + material relit under each HDRI and rendered by Cycles from
  held-out cameras, through the extension's own code (import_result, relight.set_world, relight.render_still);
- ``environment.jpg``: the recovered environment map, tone-mapped;
- ``pictures.json``: the run's settings and the render settings, so the README can say what made them.

Needs ``bpy`` (Blender as a Python module) for the relit renders; the rest uses numpy, PIL and OpenEXR.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
THUMB = 160  # px per tile: the README shows them at about this size


def _label(img: Image.Image, text: str) -> Image.Image:
    """A caption strip under the tile (PIL's built-in font: no font files needed)."""
    out = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    out.paste(img.convert("RGB"), (0, 0))
    ImageDraw.Draw(out).text((4, img.height + 2), text, fill=(0, 0, 0))
    return out


def _over_white(path: Path, bg_rgb: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    img = Image.open(path)
    if img.mode in ("RGBA", "LA"):
        bg = Image.new("RGBA", img.size, (*bg_rgb, 255))
        img = Image.alpha_composite(bg, img.convert("RGBA"))
    return img.convert("RGB")


def _row(tiles: list[Image.Image], gap: int = 4) -> Image.Image:
    w = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    h = max(t.height for t in tiles)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + gap
    return out


def contact_sheet(run: Path, dest: Path, n: int = 8) -> Path:
    recs = json.loads((run / "cameras.json").read_text(encoding="utf-8"))["cameras"]
    picks = [recs[int(i)] for i in np.linspace(0, len(recs) - 1, n)]
    tiles = [_over_white(Path(r["image"])).resize((THUMB // 4 * 3, THUMB // 4 * 3), Image.LANCZOS) for r in picks]
    half = (len(tiles) + 1) // 2
    rows = [_row(tiles[:half]), _row(tiles[half:])]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows) + 4), (255, 255, 255))
    sheet.paste(rows[0], (0, 0))
    sheet.paste(rows[1], (0, rows[0].height + 4))
    path = dest / "capture.jpg"
    sheet.save(path, quality=85)
    return path


def material_maps(run: Path, dest: Path) -> Path:
    views = json.loads((run / "maps.json").read_text(encoding="utf-8"))["views"]
    files = views[0]["files"]
    tiles = []
    for role in ("render", "albedo", "roughness", "metallic", "normal", "phy"):
        # Alpha is coverage; dark grey behind it keeps a white albedo or roughness visible.
        img = _over_white(run / files[role], (48, 48, 48)).resize((THUMB, THUMB), Image.LANCZOS)
        names = {"render": "final render", "phy": "physical (I_phy)", "normal": "normal (world)"}
        tiles.append(_label(img, names.get(role, role)))
    path = dest / "maps.png"
    _row(tiles).save(path, optimize=True)
    return path


def _read_exr(path: Path) -> np.ndarray:
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        ch = f.channels()
        if "RGB" in ch:
            return np.asarray(ch["RGB"].pixels, np.float32)
        return np.stack([np.asarray(ch[c].pixels, np.float32) for c in ("R", "G", "B")], -1)


def tonemap(hdr: np.ndarray) -> np.ndarray:
    """Exposure to the 99th percentile, Reinhard, sRGB: shows both the bright and the dark parts of a map."""
    lum = hdr @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    x = hdr / max(float(np.percentile(lum, 99)), 1e-6) * 1.5
    x = x / (1.0 + x)
    x = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.clip(x, 0, None) ** (1 / 2.4) - 0.055)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def environment_png(run: Path, dest: Path) -> Path:
    img = Image.fromarray(tonemap(_read_exr(run / "environment.exr")))
    path = dest / "environment.jpg"  # noisy HDR detail compresses badly as PNG (~180 KB)
    _label(img.resize((512, 256), Image.LANCZOS), "recovered environment (equirectangular, Z up, +X centre)").save(
        path, quality=88)
    return path


def _hdri_thumb(path: Path, size: int) -> Image.Image:
    if path.suffix.lower() == ".exr":
        hdr = _read_exr(path)
    else:
        import bpy

        img = bpy.data.images.load(str(path), check_existing=True)
        w, h = img.size
        hdr = np.asarray(img.pixels[:], np.float32).reshape(h, w, 4)[::-1, :, :3]
    return Image.fromarray(tonemap(hdr)).resize((size * 2, size), Image.LANCZOS)


def relit(run: Path, dest: Path, hdris: list[Path], samples: int, scale: int, views: int = 3) -> list[Path]:
    """Import the run with the extension and render held-out views under each HDRI with Cycles."""
    sys.path.insert(0, str(REPO))
    import bpy  # noqa: I001 - first: importing bpy puts addon_utils on sys.path
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("prd_blender", default_set=True, handle_error=None)
    from prd_blender import importer, relight

    scene = bpy.context.scene
    made = importer.import_result(scene, run, gaussians=False)
    if made["mesh"] is None:
        raise SystemExit(f"{run} has no mesh: run `prd mesh {run}` first")
    cams = [c for c in made["cameras"] if c.get("prd_split") == "test"] or made["cameras"]
    cams = [cams[int(i)] for i in np.linspace(0, len(cams) - 1, views)]
    scene.render.resolution_percentage = scale
    scene.render.film_transparent = False
    paths = []
    tmp = dest / ".relit_tmp"
    tmp.mkdir(exist_ok=True)
    for hdri in hdris:
        relight.set_world(scene, hdri, 0.0, 1.0)
        tiles = []
        for cam in cams:
            scene.camera = cam
            out = tmp / f"{hdri.stem}_{cam.name}.png"
            out.unlink(missing_ok=True)
            relight.render_still(scene, out, samples)
            tiles.append(_label(Image.open(out).convert("RGB").resize((THUMB, THUMB), Image.LANCZOS), cam.name))
            out.unlink()
        thumb = _label(_hdri_thumb(hdri, THUMB // 2), hdri.stem)
        path = dest / f"relit_{hdri.stem}.jpg"
        _row([thumb] + tiles).save(path, quality=88)
        paths.append(path)
    tmp.rmdir()
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", default=REPO / "out" / "sample")
    p.add_argument("--hdri-dir", type=Path, default=REPO.parent / "shared" / "data" / "hdri")
    p.add_argument("--hdris", default="quarry_01_1k,moonless_golf_1k", help="comma-separated HDRI file stems")
    p.add_argument("--dest", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--scale", type=int, default=200, help="render size in percent of the capture's")
    a = p.parse_args()
    run = a.run.resolve()
    if not (run / "manifest.json").is_file():
        raise SystemExit(f"{run} is not a run folder: run `bash scripts/demo.sh` first")
    a.dest.mkdir(parents=True, exist_ok=True)
    hdris = []
    for stem in a.hdris.split(","):
        found = sorted(a.hdri_dir.glob(stem + ".*"))
        if not found:
            raise SystemExit(f"no HDRI named {stem} in {a.hdri_dir}")
        hdris.append(found[0])
    t0 = time.time()
    made = [contact_sheet(run, a.dest), material_maps(run, a.dest), environment_png(run, a.dest)]
    made += relit(run, a.dest, hdris, a.samples, a.scale)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    settings = json.loads((run / "run.json").read_text(encoding="utf-8"))
    info = {
        "made": time.strftime("%Y-%m-%d"),
        "run": {"capture": Path(settings["capture"]).name, "resolution": settings.get("resolution"),
                "iterations": settings["config"]["iterations"],
                "distill_iterations": (settings.get("distill") or {}).get("stage2"),
                "hold_out_every": settings.get("hold_out_every"), "result": manifest.get("result"),
                "mesh": {k: manifest.get("asset", {}).get(k) for k in ("quality", "texture_size", "faces")}},
        "relight": {"hdris": [h.name for h in hdris], "cycles_samples": a.samples, "scale_percent": a.scale},
        "seconds": round(time.time() - t0, 1),
        "files": {m.name: m.stat().st_size for m in made},
    }
    (a.dest / "pictures.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
