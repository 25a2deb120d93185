"""``prd bench relight``: PRD against Cycles ground truth (novel views, relighting, albedo, normals,
roughness) on the synthetic objects of ``scripts/make_relight_benchmark.py``, with the ablations.

Stage 1 is trained once per object and shared by every variant, so variants differ only in stages 2-4.
Each object also gets the shading model's ceiling (``relight_ceiling``): I_phy from the ground truth.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..capture import load_capture
from ..pipeline import save_distilled_run
from ..shading.brdf_lut import get_brdf_lut
from ..shading.envmap import EnvironmentLight
from ..shading.hdr_io import read_image
from ..shading.shade import linear_to_srgb
from ..train.distill import (
    DistillConfig,
    bounce_source,
    composite,
    relight_environment,
    shade_maps,
    train_distill,
    trained_environment,
)
from ..train.gaussians import Gaussians
from ..train.losses import AlbedoOrientation
from ..train.losses import psnr as psnr_t
from ..train.progress import Progress
from ..train.render import Camera, render_pbr_maps
from ..train.stage1 import Stage1Config, camera_extent, train_stage1
from .common import record, table
from .light_score import light_irradiance_score
from .relight_ceiling import shading_ceiling
from .relight_data import load_relight_object, mae, normal_angle_error_deg, read_json, scale_fit_psnr
from .relight_score import FITS, relight_psnr

VARIANTS = {"prd": "PRD", "direct": "(a) no distillation", "no_losses": "(b) no progress/light losses"}


@torch.no_grad()
def evaluate_object(model, light, vis, cfg: DistillConfig, obj, test_views, hdri_dir: Path) -> dict:
    """All metrics of one trained variant on the object's test views (means over views)."""
    lut = get_brdf_lut()
    bg = torch.ones(3)
    relights = {}
    for h in obj.relight_hdris:
        info = next(x for x in obj.meta["relight_hdris"] if x["name"] == h)
        env = read_image(hdri_dir / info["file"]) * float(info.get("strength", 1.0))
        whole = EnvironmentLight(cfg.light_resolution, init=env)
        relights[h] = (*relight_environment(whole, cfg), whole)
    m = {"nvs_psnr": [], "relight_psnr": [], "relight_psnr_fit_all": [], "albedo_psnr": [], "normal_deg": [],
         "roughness_mae": [], "metallic_mae": [], "progress_mean": []}
    per_hdri: dict[str, list[float]] = {h: [] for h in relights}
    sky_t, sun_t = trained_environment(light, cfg)
    source = bounce_source(model, cfg)
    # How much of the log-albedo a function of the normal explains, pooled over the test views: a wrong learned
    # light leaves such a pattern in a diffuse albedo (train.losses.AlbedoOrientation); the truth's is chance.
    orient, orient_gt = AlbedoOrientation(decay=1.0), AlbedoOrientation(decay=1.0)
    # The same maps relit with the whole map in the split sum (no sun split), for comparison in one run.
    no_sun: dict[str, list[float]] = {h: [] for h, (_, sun, _) in relights.items() if sun is not None}
    for view, gt in zip(test_views, obj.views, strict=True):
        cam = Camera.from_view(view)
        maps = render_pbr_maps(model, cam, cfg.sh_degree, "cpu")
        sh = shade_maps(maps, sky_t, lut, vis, 4, cfg, sun_t, source)
        img = composite(sh["blend"], maps["coverage"], bg).clamp(0, 1)
        m["nvs_psnr"].append(psnr_t(img, cam.image))
        mask = gt.mask > 0.5
        m["albedo_psnr"].append(scale_fit_psnr(maps["albedo"].numpy(), gt.albedo, mask))
        m["normal_deg"].append(normal_angle_error_deg(maps["normal"].numpy(), gt.normal, mask))
        m["roughness_mae"].append(mae(maps["roughness"][..., 0].numpy(), gt.roughness, mask))
        m["metallic_mae"].append(mae(maps["metallic"][..., 0].numpy(), gt.metallic, mask))
        m["progress_mean"].append(float(maps["progress"][..., 0].numpy()[mask].mean()))
        orient.update(maps["albedo"], maps["normal"], maps["coverage"])  # the moments alone: no loss to build
        orient_gt.update(torch.from_numpy(gt.albedo), torch.from_numpy(gt.normal), torch.from_numpy(gt.mask)[..., None])
        for h, (sky, sun, whole) in relights.items():
            phy = shade_maps(maps, sky, lut, vis, 4, cfg, sun, source)["phy"].numpy()
            if h in no_sun and h in gt.relit_linear:
                plain = shade_maps(maps, whole, lut, vis, 4, cfg, source=source)["phy"].numpy()
                no_sun[h].append(relight_psnr(plain, gt.relit_linear[h], gt.relit[h], mask, "display"))
            if h in gt.relit_linear:
                # the light/albedo scale is ambiguous: relight_score fits it in display space
                scores = {f: relight_psnr(phy, gt.relit_linear[h], gt.relit[h], mask, f) for f in FITS}
            else:  # a display-only ground truth: fit the scale in display space
                pred = linear_to_srgb(torch.from_numpy(np.clip(phy, 0, 1))).numpy()
                scores = dict.fromkeys(FITS, scale_fit_psnr(pred, gt.relit[h][..., :3], mask))
            per_hdri[h].append(scores["display"])
            m["relight_psnr"].append(scores["display"])
            m["relight_psnr_fit_all"].append(scores["all"])  # the metric of relighting runs 1-7
    # per HDRI as well: a hard sun (quarry) and a soft sky fail differently
    out = {**{k: float(np.mean(v)) for k, v in m.items()},
           "relight_psnr_per_hdri": {h: float(np.mean(v)) for h, v in per_hdri.items()}}
    out["albedo_orientation"], out["albedo_orientation_gt"] = orient.explained(), orient_gt.explained()
    if any(no_sun.values()):
        out["relight_psnr_per_hdri_no_sun"] = {h: float(np.mean(v)) for h, v in no_sun.items() if v}
    info = obj.meta.get("hdri")
    if info:  # the learned light against the one the training images were rendered under
        env = read_image(hdri_dir / info["file"]) * float(info.get("strength", 1.0))
        out.update(light_irradiance_score(light, EnvironmentLight(cfg.light_resolution, init=env)))
    return out


def check_inputs(data: Path, objects: Sequence[str], hdri_dir: Path) -> None:
    """Fail before any training if an object's folder, its meta.json or an HDRI it names is missing: the
    maps are read after each object has trained (tens of minutes per object), so a wrong ``--hdri-dir``
    (a relative default, read from the working directory) would otherwise throw the trained models away."""
    missing = []
    for name in objects:
        meta_path = Path(data).expanduser() / name / "meta.json"
        if not meta_path.is_file():
            missing.append(f"{meta_path} (object {name!r}; render it with scripts/make_relight_benchmark.py)")
            continue
        meta = read_json(meta_path, "meta.json")
        infos = [meta.get("hdri") or {}, *meta.get("relight_hdris", [])]
        missing += [f"{hdri_dir / i['file']} (object {name!r})" for i in infos
                    if i.get("file") and not (hdri_dir / i["file"]).is_file()]
    if missing:
        raise FileNotFoundError("relight benchmark: missing before training: " + "; ".join(missing)
                                + f" (--hdri-dir is {hdri_dir}, resolved from {Path.cwd()})")


def bench_relight(
    data: Path, objects: list[str], variants: list[str], iterations: int, distill_iterations: int,
    hdri_dir: Path, json_path: Path | None, stage1_cache: Path | None = None, seeds: Sequence[int] = (0,),
    stage1_overrides: dict | None = None, keep: Path | None = None, known_light: bool = False, **distill_overrides,
) -> dict:
    """``distill_overrides``: DistillConfig fields (e.g. normal_weight, visibility_resolution) for every variant.
    With no variants only the ceiling (ground-truth inputs under the overridden shading settings) is computed.

    ``stage1_cache``: a folder where each object's stage-1 model is kept (keyed by object, iteration count
    and ``stage1_overrides``: Stage1Config fields) and reused, so that experiments on stages 2-4 do not
    retrain stage 1.

    ``seeds``: stages 2-4 of every variant are trained once per seed (the order the training views are
    visited in) on the same stage 1. With several, a variant's metrics are the means over the seeds, and
    each seed's are kept under ``per_seed``: differences between variants can be read against the spread.

    ``keep``: write each trained model there as a complete run folder, ``<variant>_seed<seed>/<object>/``
    (``pipeline.save_distilled_run``), which ``prd relight``, ``prd bench mesh --runs KEEP/prd_seed0`` and
    Blender's import read; None keeps nothing.

    ``known_light``: every variant is given the object's training HDRI as a known light (``DistillConfig.known_light``:
    its shape fixed, its gain fitted), as a user with an HDRI of the capture's surroundings would.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    if keep is not None and keep.is_dir() and any(keep.iterdir()):
        raise ValueError(f"--keep folder {keep} is not empty; the models of an earlier run would be overwritten")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    check_inputs(data, objects, hdri_dir)
    n = distill_iterations
    base = DistillConfig(**{"stage2": n, "stage3": n, "stage4": n, **distill_overrides})  # --set may shorten a stage
    results: dict = {
        "objects": {}, "known_light": known_light, "iterations": iterations, "distill_iterations": n,
        "distill_config": dataclasses.asdict(base),
        "seeds": seeds, "stage1_config": {k: v for k, v in dataclasses.asdict(
            Stage1Config(iterations=iterations, **(stage1_overrides or {}))).items() if k != "densify"},
    }
    rows = []
    for name in objects:
        obj = load_relight_object(data / name)
        train = load_capture(obj.train_transforms).views
        test = load_capture(obj.test_transforms).views
        prog = Progress(None, quiet=True)
        s1 = Stage1Config(iterations=iterations, **(stage1_overrides or {}))
        per: dict = {"variants": {}}
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            if variants:  # none: only the shading model's ceiling, no training
                model1, t_stage1 = _stage1(train, s1, tmp, prog, stage1_cache, name, stage1_overrides or {})
                per["stage1_seconds"] = round(t_stage1, 1)
            for var in variants:
                cfg = dataclasses.replace(base, variant=var)
                if known_light:
                    cfg.known_light = str((hdri_dir / obj.meta["hdri"]["file"]).resolve())
                runs = {}
                for seed in seeds:
                    t1 = time.time()
                    model, light, vis, _ = train_distill(
                        train, copy.deepcopy(model1), cfg, tmp, prog, "cpu", (1.0, 1.0, 1.0), camera_extent(train),
                        seed=seed,
                    )
                    secs = time.time() - t1
                    if keep is not None:  # a run folder of its own: bench mesh --runs KEEP/<variant>_seed<seed>
                        save_distilled_run(keep / f"{var}_seed{seed}" / name, capture=obj.train_transforms,
                                           train_views=train, test_views=test, background=(1.0, 1.0, 1.0),
                                           config=s1, distill=cfg, model=model, light=light, vis=vis,
                                           seconds=t_stage1 + secs)
                    runs[seed] = evaluate_object(model, light, vis, cfg, obj, test, hdri_dir)
                    runs[seed]["train_seconds"] = round(t_stage1 + secs, 1)
                met = runs[seeds[0]] if len(seeds) == 1 else {**_mean_metrics(list(runs.values())), "per_seed": runs}
                per["variants"][var] = met
                rows.append(_row(name, VARIANTS[var], met))
                print(table(rows[-1:], HEADER), flush=True)
        per["ceiling"] = shading_ceiling(obj, test, hdri_dir, base)
        rows.append([name, "ceiling (ground-truth inputs)", "-", f"{per['ceiling']['relight_psnr']:.2f}",
                     "-", "-", "-", "-", "-"])
        print(table(rows[-1:], HEADER), flush=True)
        results["objects"][name] = per
    results["mean"] = {var: _mean_metrics([results["objects"][o]["variants"][var] for o in objects], scalars=True)
                       for var in variants}
    results["mean_ceiling_relight_psnr"] = float(np.mean([results["objects"][o]["ceiling"]["relight_psnr"]
                                                          for o in objects]))
    print(table(rows, HEADER))
    return record(json_path, results)


def rescore_relight(data: Path, runs: Path, objects: list[str], hdri_dir: Path, json_path: Path | None,
                    **overrides) -> dict:
    """Scores models kept by ``bench_relight(keep=RUNS)`` again, without training: every
    ``RUNS/<variant>_seed<seed>/<object>`` folder of the chosen objects, with today's shading and metrics, each
    run's own DistillConfig changed by ``overrides`` (e.g. ``sun_ratio=0``). So a change to relighting alone is
    measured on the very same models."""
    from ..pipeline import load_distilled

    folders = sorted(p for p in runs.glob("*_seed*/*") if p.name in objects and (p / "run.json").is_file())
    if not folders:
        raise ValueError(f"no kept runs for {', '.join(objects)} under {runs} (expected <variant>_seed<seed>/<object>)")
    check_inputs(data, sorted({p.name for p in folders}), hdri_dir)
    results: dict = {"runs": str(runs), "overrides": overrides, "objects": {}}
    rows = []
    for folder in folders:
        obj = load_relight_object(data / folder.name)
        test = load_capture(obj.test_transforms).views
        cfg, model, light, vis = load_distilled(folder)
        cfg = dataclasses.replace(cfg, **overrides)
        met = evaluate_object(model, light, vis, cfg, obj, test, hdri_dir)
        results["objects"].setdefault(folder.name, {})[folder.parent.name] = met
        rows.append(_row(folder.name, folder.parent.name, met))
        print(table(rows[-1:], HEADER), flush=True)
    print(table(rows, HEADER))
    return record(json_path, results)


def _row(name: str, label: str, met: dict) -> list[str]:
    """One line of the table (``HEADER``); "-" for the training time of a model scored again."""
    secs = f"{met['train_seconds']:.0f}" if "train_seconds" in met else "-"
    return [name, label, f"{met['nvs_psnr']:.2f}", f"{met['relight_psnr']:.2f}", f"{met['albedo_psnr']:.2f}",
            f"{met['normal_deg']:.1f}", f"{met['roughness_mae']:.3f}", f"{met['progress_mean']:.2f}", secs]


def _mean_metrics(mets: list[dict], scalars: bool = False) -> dict:
    """The mean of each metric over several evaluations (seeds, or objects with ``scalars``: the per-HDRI
    figures of different objects are not averaged, their HDRIs may differ)."""
    out: dict = {k: float(np.mean([m[k] for m in mets])) for k, v in mets[0].items() if isinstance(v, (int, float))}
    if not scalars:
        hdris = mets[0]["relight_psnr_per_hdri"]
        out["relight_psnr_per_hdri"] = {h: float(np.mean([m["relight_psnr_per_hdri"][h] for m in mets])) for h in hdris}
    return out


def _stage1(train, s1: Stage1Config, tmp: Path, prog: Progress, cache: Path | None, name: str,
            overrides: dict):
    """Train stage 1, or load it from ``cache``; returns the model and the (original) training seconds."""
    # the defaults keep the plain name, so caches made before a field existed stay valid
    key = "".join(f"_{k}={v}" for k, v in sorted(overrides.items()))
    path = cache / f"{name}_stage1_{s1.iterations}{key}.pt" if cache is not None else None
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=False)
        return Gaussians(state["params"]), state["seconds"]
    t0 = time.time()
    model1, _ = train_stage1(train, s1, tmp, prog, "cpu", (1.0, 1.0, 1.0))
    secs = time.time() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"params": model1.state_dict(), "seconds": secs}, path)
    return model1, secs


HEADER = ["object", "variant", "NVS dB", "relight dB", "albedo dB", "normal deg", "rough MAE", "progress", "train s"]

