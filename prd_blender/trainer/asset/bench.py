"""``prd bench mesh``: geometry and texture fidelity of the baked asset on the synthetic relighting objects.

Per object: Chamfer distance between the extracted mesh and the ground-truth ``mesh.ply`` (mean of both
directions, area-uniform surface samples, in % of the GT bounding-box diagonal), the watertightness report,
and the albedo texture rendered on the baked mesh from the test cameras vs the Cycles albedo pass (PSNR
after a per-channel scale fit, like ``bench relight``), next to the same metric for the Gaussians' own
splatted albedo so that the loss due to baking is visible.

Then the deployable test: the GLB rendered by Cycles (through Blender's glTF importer, in a subprocess: see
``render_cycles``) from the test cameras under the training HDRI and the relighting HDRIs, scored against the
Cycles ground truth exactly like ``bench relight`` scores the Gaussians' I_phy (per-channel scale fitted in
linear, PSNR in display space over the GT object mask), next to the Gaussians' I_phy under the same HDRI on the
same views; the gap (Gaussians - mesh) is what baking to a mesh costs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..bench.relight_score import FITS, relight_psnr
from .gltf import read_ply_columns, read_ply_mesh
from .surface import raster_view

# ------------------------------------------------------------------------------------ mesh rendering


def sample_bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (H, W, C) at UVs (M, 2) in Blender's convention (v up)."""
    H, W = img.shape[:2]
    x = np.clip(uv[:, 0] * W - 0.5, 0, W - 1)
    y = np.clip((1 - uv[:, 1]) * H - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    return ((1 - ax) * (1 - ay) * img[y0, x0] + ax * (1 - ay) * img[y0, x1]
            + (1 - ax) * ay * img[y1, x0] + ax * ay * img[y1, x1])


def render_textured(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
                    viewmat: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a UV-textured mesh (unlit) from an OpenCV camera: (image (H, W, C), mask (H, W))."""
    tri, bary, _ = raster_view(vertices, faces, viewmat, K, width, height)
    mask = tri >= 0
    out = np.zeros((height, width, texture.shape[2]))
    f = faces[tri[mask]]
    uv = (uvs[f] * bary[mask][..., None]).sum(1)
    out[mask] = sample_bilinear(texture, uv)
    return out, mask


# ------------------------------------------------------------------------------------ geometry metrics


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly distributed over the surface area."""
    rng = np.random.default_rng(seed)
    v = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    idx = rng.choice(len(faces), n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1 - s, s * (1 - r2), s * r2
    return w0[:, None] * v[idx, 0] + w1[:, None] * v[idx, 1] + w2[:, None] * v[idx, 2]


def chamfer(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], n: int = 100_000) -> dict:
    """Chamfer distance (mean of the two mean nearest-neighbour distances) and both directions, in % of the
    GT bounding-box diagonal; also the 95th percentile of pred->gt (floaters / bulges show there)."""
    from scipy.spatial import cKDTree

    diag = float(np.linalg.norm(gt[0].max(0) - gt[0].min(0)))
    p = sample_surface(*pred, n, seed=1)
    g = sample_surface(*gt, n, seed=2)
    d_pg = cKDTree(g).query(p)[0]
    d_gp = cKDTree(p).query(g)[0]
    return {
        "chamfer_pct": float(50.0 * (d_pg.mean() + d_gp.mean()) / diag),
        "accuracy_pct": float(100.0 * d_pg.mean() / diag),
        "completeness_pct": float(100.0 * d_gp.mean() / diag),
        "accuracy_p95_pct": float(100.0 * np.percentile(d_pg, 95) / diag),
        "gt_diagonal": diag,
    }


# ------------------------------------------------------------------------------------ the benchmark


def _read_texture(path: Path) -> np.ndarray:
    x = np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)  # sRGB PNG -> linear albedo


def texture_fidelity(run: Path, obj, test_views) -> dict:
    """Albedo PSNR (scale-fitted, linear) of the baked texture on the mesh and of the Gaussians' splat."""
    from ..bench.relight_data import scale_fit_psnr
    from ..outputs import read_manifest
    from ..train.gaussians import Gaussians
    from ..train.render import Camera
    from .surface import render_views

    files = read_manifest(run)["files"]
    verts, faces, uvs = _read_uv_ply(run / files["mesh"])
    tex = _read_texture(run / files["texture_albedo"])
    model = Gaussians.load_ply(run / files["gaussians"])
    baked, splat = [], []
    for view, gt in zip(test_views, obj.views, strict=True):
        K, w2c = np.asarray(view.K, np.float64), np.asarray(view.world_to_cam, np.float64)
        img, mask = render_textured(verts, faces, uvs, tex, w2c, K, view.width, view.height)
        m = (gt.mask > 0.5) & mask
        baked.append(scale_fit_psnr(img, gt.albedo, m))
        cam = Camera(view.name, torch.tensor(w2c, dtype=torch.float32), torch.tensor(K, dtype=torch.float32),
                     view.width, view.height, torch.tensor(np.linalg.inv(w2c)[:3, 3], dtype=torch.float32),
                     torch.zeros(0), None)
        vs = render_views(model, [cam], "cpu")
        cov = vs.coverage[0]
        alb = vs.feats[0, ..., :3] / np.maximum(cov[..., None], 1e-6)
        splat.append(scale_fit_psnr(alb, gt.albedo, (gt.mask > 0.5) & (cov > 0.5)))
    return {"albedo_psnr_baked": float(np.mean(baked)), "albedo_psnr_gaussians": float(np.mean(splat))}


def _read_uv_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our mesh.ply: vertices, faces and the s/t UVs."""
    cols, faces = read_ply_columns(path)
    return np.stack([cols[k] for k in "xyz"], 1), faces, np.stack([cols["s"], cols["t"]], 1)


def outer_chamfer(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], n: int = 100_000) -> dict:
    """Chamfer against the GT's *outer* surface only: GT samples inside another connected shell of the GT are
    dropped. Why: the glossy object's sphere and torus intersect (the GT mesh keeps both whole shells), and
    25 % of its area lies inside the other shell, where no reconstruction from images can put a surface.
    Inside means: the offset from the nearest point of a shell points against its normal, which is exact only
    for closed shells; when a GT shell is open (Suzanne's head), nothing is dropped (``gt_shells_closed``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    gv, gf = gt
    e = np.concatenate([gf[:, [0, 1]], gf[:, [1, 2]]])
    _, lab = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(gv),) * 2),
                                  directed=False)
    flab = lab[gf[:, 0]]
    g = sample_surface(gv, gf, n, seed=2)
    gcomp = flab[cKDTree(gv[gf].mean(1)).query(g)[1]]  # shell of each sample (nearest face centre)
    from .surface import edge_report

    inside = np.zeros(n, bool)
    closed = all(edge_report(gf[flab == c])["boundary_edges"] == 0 for c in np.unique(flab))
    for c in np.unique(flab) if closed else []:
        sel = flab == c
        v = gv[gf[sel]]
        fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-20)
        dense = sample_surface(gv, gf[sel], 4 * n, seed=3)
        face = cKDTree(v.mean(1)).query(dense)[1]
        other = np.nonzero(gcomp != c)[0]
        # inside a closed shell: the offset to its nearest dense sample points against that face's normal
        _, j = cKDTree(dense).query(g[other])
        inside[other[np.einsum("ij,ij->i", g[other] - dense[j], fn[face[j]]) < 0]] = True
    diag = float(np.linalg.norm(gv.max(0) - gv.min(0)))
    p = sample_surface(*pred, n, seed=1)
    go = g[~inside]
    acc, comp = cKDTree(go).query(p)[0].mean(), cKDTree(p).query(go)[0].mean()
    return {"outer_chamfer_pct": float(50.0 * (acc + comp) / diag), "outer_accuracy_pct": float(100 * acc / diag),
            "outer_completeness_pct": float(100 * comp / diag), "gt_hidden_fraction": float(inside.mean()),
            "gt_shells_closed": bool(closed)}


# ------------------------------------------------------------------------------------ Cycles vs Gaussians


def lightings(obj, hdri_dir: Path) -> list[dict]:
    """The training HDRI and the relighting HDRIs, with the strengths the ground truth was rendered with."""
    infos = [obj.meta["hdri"], *obj.meta.get("relight_hdris", [])]
    return [{"name": x["name"], "file": str(Path(hdri_dir).expanduser() / x["file"]),
             "strength": float(x.get("strength", 1.0))} for x in infos]


def _ground_truth(view, light_name: str, obj) -> tuple[np.ndarray, np.ndarray]:
    """(linear, display) RGBA of a test view under one of the object's HDRIs."""
    if light_name == obj.hdri:
        return view.linear, view.image
    return view.relit_linear[light_name], view.relit[light_name]


@torch.no_grad()
def gaussian_relight(run: Path, obj, test_views, lights: list[dict],
                     frames: list[int]) -> dict[str, dict[str, list[float]]]:
    """Per scale fit (``relight_score.FITS``) and lighting, the PSNR of the Gaussians' I_phy (the trained run's
    own shading, lit by the HDRI as the GT was) on the chosen test views."""
    from ..pipeline import load_distilled
    from ..shading.brdf_lut import get_brdf_lut
    from ..shading.envmap import EnvironmentLight
    from ..shading.hdr_io import read_image
    from ..train.distill import bounce_source, relight_environment, shade_maps
    from ..train.render import Camera, render_pbr_maps

    cfg, model, _, vis = load_distilled(run)
    lut = get_brdf_lut()
    source = bounce_source(model, cfg)
    envs = {x["name"]: relight_environment(EnvironmentLight(cfg.light_resolution, init=read_image(Path(x["file"]))
                                                            * x["strength"]), cfg) for x in lights}
    out: dict[str, dict[str, list[float]]] = {fit: {x["name"]: [] for x in lights} for fit in FITS}
    for i in frames:
        view, gt = test_views[i], obj.views[i]
        maps = render_pbr_maps(model, Camera.from_view(view), cfg.sh_degree, "cpu")
        mask = gt.mask > 0.5
        for name, (light, sun) in envs.items():
            phy = shade_maps(maps, light, lut, vis, 4, cfg, sun, source)["phy"].numpy()
            lin, disp = _ground_truth(gt, name, obj)
            for fit in FITS:
                out[fit][name].append(relight_psnr(phy, lin, disp, mask, fit))
    return out


def read_render(path: Path) -> np.ndarray:
    """A Cycles RGBA EXR (premultiplied) -> straight linear RGBA, like the GT loader reads its EXRs."""
    from ..bench.relight_data import _straight_rgba, read_exr_passes

    chans = read_exr_passes(path)[""]
    return _straight_rgba(np.stack([chans[c] for c in "RGBA"], -1))


def cycles_fidelity(run: Path, obj, test_views, hdri_dir: Path, frames: list[int], size: int, samples: int) -> dict:
    """Render ``mesh.glb`` with Cycles at the test ``frames`` under every HDRI of the object and score it against
    the GT next to the Gaussians' I_phy. Renders are kept in ``run/bench_cycles/<hdri>/``."""
    from ..outputs import read_manifest
    from .render_cycles import render_glb

    files = read_manifest(run)["files"]
    lights = lightings(obj, hdri_dir)
    dest = run / "bench_cycles"
    info = render_glb(run / files["glb"], obj.test_transforms, frames, lights, dest, size=size, samples=samples)
    gauss = gaussian_relight(run, obj, test_views, lights, frames)
    res: dict = {"views": len(frames), "size": size, "samples": samples, "blender": info["blender"],
                 "render_seconds": info["total_s"], "hdris": {}}
    for x in lights:
        mesh: dict[str, list[float]] = {fit: [] for fit in FITS}
        for i in frames:
            gt = obj.views[i]
            img = read_render(dest / x["name"] / f"{gt.name}.exr")
            if img.shape[:2] != gt.mask.shape:
                raise ValueError(f"Cycles render {img.shape[:2]} does not match the GT size {gt.mask.shape}")
            lin, disp = _ground_truth(gt, x["name"], obj)
            for fit in FITS:
                mesh[fit].append(relight_psnr(img[..., :3], lin, disp, gt.mask > 0.5, fit))
        m, g = float(np.mean(mesh["display"])), float(np.mean(gauss["display"][x["name"]]))
        m_all, g_all = float(np.mean(mesh["all"])), float(np.mean(gauss["all"][x["name"]]))
        res["hdris"][x["name"]] = {
            "training": x["name"] == obj.hdri, "mesh_psnr": m, "gaussian_psnr": g, "gap_db": g - m,
            "mesh_psnr_views": mesh["display"], "gaussian_psnr_views": gauss["display"][x["name"]],
            # scored with the scale fitted on every pixel, as mesh runs 1-6 were (bench/relight_score.py)
            "fit_all": {"mesh_psnr": m_all, "gaussian_psnr": g_all, "gap_db": g_all - m_all},
        }
    return res


# ------------------------------------------------------------------------------------ the benchmark


def bench_mesh(data: Path, objects: list[str], runs: Path, quality: str, texture_size: int, iterations: int,
               distill_iterations: int, resolution: int, json_path: Path | None, hdri_dir: Path | None = None,
               cycles_views: int = 20, cycles_samples: int = 32, cycles_size: int = 128, refine_steps: int = 0) -> dict:
    """Bake and measure each object. ``runs/<object>`` is used when it holds a finished run; otherwise a run
    is trained there first with the given iteration counts and resolution.

    ``hdri_dir``: where the benchmark's HDRIs are; None skips the Cycles renders. ``cycles_views``: how many
    test views (evenly spaced) Cycles renders per HDRI (0: none). ``refine_steps``: albedo refinement through
    Cycles after the bake (``asset.refine``, as ``prd mesh`` does by default; needs Blender).
    """
    from ..bench.common import table
    from ..bench.relight_data import load_relight_object
    from ..capture import load_capture
    from ..outputs import read_manifest
    from .bake import bake_asset
    from .render_cycles import CyclesUnavailable, renderer_command
    from .surface import edge_report, weld

    cycles_skip = None
    if hdri_dir is None or cycles_views <= 0:
        cycles_skip = "not asked for (no --hdri-dir or --cycles-views 0)"
    else:
        try:
            renderer_command()
        except CyclesUnavailable as exc:  # measure the rest; say loudly what is missing
            cycles_skip = str(exc)
            print(f"prd bench mesh: skipping the Cycles renders: {exc}", file=sys.stderr, flush=True)
    results: dict = {"quality": quality, "texture_size": texture_size, "objects": {}}
    if cycles_skip:
        results["cycles_skipped"] = cycles_skip
    rows = []
    for name in objects:
        obj = load_relight_object(data / name)
        run = runs / name
        t0 = time.time()
        done = (run / "manifest.json").is_file() and read_manifest(run).get("status") == "complete"
        if not done:
            from ..pipeline import run_train
            from ..train.distill import DistillConfig

            n = distill_iterations
            run_train(obj.train_transforms, run, iterations=iterations, resolution=resolution,
                      distill=DistillConfig(stage2=n, stage3=n, stage4=n), quiet=True, overwrite=True)
        train_s = time.time() - t0 if not done else read_manifest(run)["result"]["seconds"]
        run_cfg = json.loads((run / "run.json").read_text())
        summary = bake_asset(run, quality=quality, texture_size=texture_size)
        refine: dict | None = None
        if refine_steps > 0:
            from .refine import refine_albedo

            try:
                renderer_command()
                refine = refine_albedo(run, refine_steps)
            except CyclesUnavailable as exc:
                refine = {"skipped": str(exc)}
        verts, faces, _ = _read_uv_ply(run / summary["files"]["mesh"])
        gt = read_ply_mesh(obj.mesh)
        # UV seams split vertices; weld by position to judge the surface's topology
        _, welded = weld(verts, faces)
        res = {
            "run": {"resolution": run_cfg["resolution"], "iterations": run_cfg["config"]["iterations"],
                    "distill_iterations": run_cfg["distill"]["stage2"]},
            **chamfer((verts, faces), gt), **outer_chamfer((verts, faces), gt),
            **edge_report(welded),
            "faces": int(len(faces)), "train_seconds": round(train_s, 1), "bake_seconds": summary["seconds"],
            "depth_offset": summary.get("depth_offset"), "refine": refine,
        }
        test_views = load_capture(obj.test_transforms).views
        # at the benchmark's full size, where the GT albedo passes are
        res.update(texture_fidelity(run, obj, test_views))
        if not cycles_skip:
            k = min(cycles_views, len(obj.views))
            frames = sorted({int(round(x)) for x in np.linspace(0, len(obj.views) - 1, k)})
            res["cycles"] = cycles_fidelity(run, obj, test_views, hdri_dir, frames, cycles_size, cycles_samples)
        results["objects"][name] = res
        print(json.dumps({"event": "bench_mesh", "object": name, **res}), flush=True)
        rows += table_rows(name, res)
    print(table(rows, HEADER))
    from ..bench.common import record

    return record(json_path, results)  # adds the command, the machine and the date


HEADER = ["object", "chamfer %", "watertight", "faces", "train s", "bake s", "albedo dB mesh/GS", "HDRI",
          "Cycles mesh dB", "GS I_phy dB", "gap dB"]


def table_rows(name: str, r: dict) -> list[list]:
    """One row per HDRI (the geometry columns on the first)."""
    bake_s = sum(r["bake_seconds"].values())
    tight = "yes" if r["watertight"] else (f"no ({r['boundary_edges']} open, {r['nonmanifold_edges']} pinched, "
                                           f"{r['inconsistent_winding']} flipped edges)")
    first = [name, f"{r['chamfer_pct']:.2f}", tight, r["faces"], f"{r['train_seconds']:.0f}", f"{bake_s:.0f}",
             f"{r['albedo_psnr_baked']:.2f} / {r['albedo_psnr_gaussians']:.2f}"]
    hd = r.get("cycles", {}).get("hdris", {})
    if not hd:
        return [first + ["-", "-", "-", "-"]]
    rows = []
    for i, (h, v) in enumerate(hd.items()):
        lead = first if i == 0 else [""] * len(first)
        label = h + (" (train)" if v["training"] else "")
        rows.append(lead + [label, f"{v['mesh_psnr']:.2f}", f"{v['gaussian_psnr']:.2f}", f"{v['gap_db']:+.2f}"])
    return rows
