"""The ``prd`` command: train, eval and benchmarks. Progress is JSON lines on stdout.

Exit codes: 0 done, 2 bad input (capture, output folder, arguments), 3 cancelled, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _background(text: str) -> tuple[float, float, float]:
    names = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if text in names:
        return names[text]
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(0 <= v <= 1 for v in vals):
        raise argparse.ArgumentTypeError("background is 'white', 'black' or 'R,G,B' with values in [0, 1]")
    return vals  # type: ignore[return-value]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError("seeds are distinct integers separated by commas, e.g. 0,1,2")
    return seeds


def parse_overrides(items: list[str], config: type | None = None, flag: str = "--set") -> dict:
    """``FIELD=VALUE`` strings -> overrides of ``config``'s fields (default DistillConfig), each value parsed
    as the field's type."""
    import dataclasses

    from .train.distill import DistillConfig

    config = config or DistillConfig
    fields = {f.name: f for f in dataclasses.fields(config)}
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"prd: error: {flag} expects FIELD=VALUE with a {config.__name__} field, got {item!r}")
        kind = str(fields[name].type)  # annotations are strings here, e.g. "float | None"
        if text.lower() == "none" and "None" in kind:
            out[name] = None
        elif kind.startswith("bool"):
            out[name] = text.lower() in ("1", "true", "yes")
        elif kind.startswith("int"):
            out[name] = int(text)
        elif kind.startswith("float"):
            out[name] = float(text)
        else:
            out[name] = text
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prd", description="Relightable Gaussian reconstruction (PRD) trainer.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train on a capture (transforms.json or COLMAP model)")
    t.add_argument("capture", help="transforms*.json, a folder holding one, a COLMAP model/project folder, or a "
                   "folder of photos (poses are computed first, into OUT/sfm)")
    t.add_argument("--out", required=True, type=Path, help="output folder (must be new or empty)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--iterations", type=int, help="stage-1 iterations (default 7000)")
    t.add_argument("--stages", type=int, choices=[1, 4], default=4,
                   help="4: the full PRD (radiance field, then material and light); 1: radiance field only")
    t.add_argument("--distill-iterations", type=int, default=1000, metavar="N", help="iterations of each of stages 2-4")
    t.add_argument("--real-scene", action="store_true",
                   help="photos without masks: progress target 1 everywhere, light frozen in stage 4, ACES tone map")
    t.add_argument("--dielectric", action="store_true",
                   help="the object has no bare metal: a prior pulls metallic to 0 (see docs/benchmarks.md)")
    t.add_argument("--light", type=Path, metavar="HDRI",
                   help="the capture's surroundings as an equirect .hdr/.exr (Blender's convention): the light keeps "
                   "its shape and only its exposure is fitted, which pins materials a learned light cannot")
    t.add_argument("--light-rotation", type=float, default=0.0, metavar="DEG",
                   help="turn --light about +Z, as Blender's Mapping node does (degrees)")
    size = t.add_mutually_exclusive_group()
    size.add_argument("--resolution", type=int, help="longer image side in pixels")
    size.add_argument("--downscale", type=float, help="divide image sides by this factor")
    t.add_argument("--background", type=_background, help="white, black or R,G,B for transparent pixels")
    t.add_argument("--hold-out", type=int, default=0, metavar="N", help="hold out every N-th view for evaluation")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier prd run in --out")
    t.add_argument("--max-seconds", type=float, help="stop (with a checkpoint) after this much training time")
    t.add_argument("--stop-at", type=int, metavar="N", help="pause after iteration N (--resume later)")
    t.add_argument("--quiet", action="store_true", help="no JSON lines on stdout (the log file still gets them)")

    ps = sub.add_parser("poses", help="camera poses from a folder of photos (structure-from-motion with pycolmap)")
    ps.add_argument("photos", type=Path, help="folder of JPEG/PNG/TIFF photos of one camera")
    ps.add_argument("--out", required=True, type=Path, help="output folder: images/, sparse/0/, sfm.json")
    ps.add_argument("--matcher", default="auto", choices=["auto", "exhaustive", "sequential", "spatial"],
                    help="auto: exhaustive up to 150 photos, sequential (file-name order) above")
    ps.add_argument("--camera-model", default="SIMPLE_RADIAL",
                    choices=["SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE"])
    ps.add_argument("--max-image-size", type=int, default=1024, help="longer side SIFT works at")
    ps.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ps.add_argument("--overwrite", action="store_true", help="replace earlier poses in --out")
    ps.add_argument("--quiet", action="store_true", help="no JSON lines on stdout")

    rl = sub.add_parser("relight", help="render the distilled asset under another HDRI")
    rl.add_argument("out", type=Path, help="a finished run folder")
    rl.add_argument("--hdri", required=True, type=Path, help="equirectangular .hdr or .exr")
    rl.add_argument("--rotation", type=float, default=0.0, help="turn the map about +Z, degrees")
    rl.add_argument("--strength", type=float, default=1.0)
    rl.add_argument("--views", default="test", help="test, train, all, or comma-separated view names")
    rl.add_argument("--dest", type=Path, help="folder for the PNGs (default OUT/relight/<hdri name>)")
    rl.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    ms = sub.add_parser("mesh", help="extract a textured mesh + GLB (PBR textures) from a finished run")
    ms.add_argument("out", type=Path, help="a finished run folder")
    ms.add_argument("--quality", default="standard", choices=["preview", "standard", "high"],
                    help="target faces: preview 20k, standard 100k, high 300k")
    ms.add_argument("--texture-size", type=int, default=1024, choices=[512, 1024, 2048])
    ms.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ms.add_argument("--refine-steps", type=int, metavar="N",
                    help="albedo refinement through Cycles against the training photos (default: 2 when Blender is "
                    "found: the bpy module, $PRD_BPY_PYTHON, $PRD_BLENDER or blender on the PATH, else none; 0: off)")

    e = sub.add_parser("eval", help="PSNR/SSIM of a finished run on its held-out views")
    e.add_argument("out", type=Path)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    br = bsub.add_parser("raster", help="rasteriser forward+backward: CPU backend vs dense PyTorch reference")
    br.add_argument("--gaussians", type=int, default=10_000)
    br.add_argument("--channels", type=int, default=16)
    br.add_argument("--size", type=int, default=128)
    br.add_argument("--repeats", type=int, default=10)
    br.add_argument("--backends", default="cpu,reference", help="comma-separated: cpu, cuda, reference")
    br.add_argument("--json", type=Path, default=Path("docs/benchmarks/raster.json"))
    bn = bsub.add_parser("nvs", help="novel-view synthesis on NeRF Synthetic lego")
    bn.add_argument("--data", type=Path, default=Path("../shared/data/lego"))
    bn.add_argument("--resolution", type=int, default=200)
    bn.add_argument("--iterations", type=int, default=7_000)
    bn.add_argument("--max-seconds", type=float, default=1200)
    bn.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bn.add_argument("--out", type=Path, help="run folder (default: a temporary folder)")
    bn.add_argument("--json", type=Path, default=Path("docs/benchmarks/nvs_lego.json"))
    bs = bsub.add_parser("sfm", help="prd poses on lego (poses withheld) vs the true poses, and the NVS effect")
    bs.add_argument("--data", type=Path, default=Path("../shared/data/lego"))
    bs.add_argument("--work", type=Path, help="folder for the poses and runs (default: a temporary folder)")
    bs.add_argument("--nvs-resolution", type=int, default=100, help="0 skips the NVS comparison")
    bs.add_argument("--nvs-iterations", type=int, default=2000)
    bs.add_argument("--max-image-size", type=int, default=400, help="longer side SIFT works at")
    bs.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bs.add_argument("--json", type=Path, default=Path("docs/benchmarks/sfm.json"))
    brl = bsub.add_parser("relight", help="PRD vs Cycles ground truth on the synthetic relighting objects")
    brl.add_argument("--data", type=Path, default=Path("~/.cache/prd_blender/relight_bench").expanduser(),
                     help="output of scripts/make_relight_benchmark.py")
    brl.add_argument("--objects", default="diffuse,glossy,mixed",
                     help="comma-separated; the targets and means in docs/benchmarks.md are over these three; also "
                     "translucent (subsurface scattering, light the shading model cannot represent)")
    brl.add_argument("--variants", default="prd,direct,no_losses",
                     help="comma-separated: prd, direct, no_losses; empty (\"\") for the ceiling alone")
    brl.add_argument("--iterations", type=int, default=3000, help="stage-1 iterations")
    brl.add_argument("--distill-iterations", type=int, default=1000, help="iterations of each of stages 2-4")
    brl.add_argument("--hdri-dir", type=Path, default=Path("../shared/data/hdri"))
    brl.add_argument("--normal-weight", type=float, help="depth-normal consistency weight (default: the trainer's)")
    brl.add_argument("--visibility-resolution", type=int, help="visibility grid cells per side (default 120)")
    brl.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a DistillConfig field for every variant (repeatable), e.g. metallic_stage3=0.1")
    brl.add_argument("--set-stage1", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a Stage1Config field (repeatable), e.g. normal_weight=0.1")
    brl.add_argument("--keep", type=Path,
                     help="write each trained model as a run folder KEEP/<variant>_seed<seed>/<object> (for prd "
                     "relight, bench mesh --runs KEEP/prd_seed0, Blender's import)")
    brl.add_argument("--known-light", action="store_true",
                     help="give every variant the object's training HDRI as a known light (its exposure still fitted)")
    brl.add_argument("--stage1-cache", type=Path, help="keep/reuse each object's stage-1 model in this folder")
    brl.add_argument("--rescore", type=Path, metavar="KEEP",
                     help="train nothing: score the models an earlier --keep KEEP wrote, with today's shading (--set "
                     "changes each run's own settings, e.g. sun_ratio=0)")
    brl.add_argument("--seeds", type=_seeds, default=[0],
                     help="comma-separated seeds: stages 2-4 are trained once per seed, metrics are the means")
    brl.add_argument("--json", type=Path, default=Path("docs/benchmarks/relight.json"))
    bm = bsub.add_parser("mesh", help="baked mesh vs ground-truth geometry and albedo on the synthetic objects")
    bm.add_argument("--data", type=Path, default=Path("~/.cache/prd_blender/relight_bench").expanduser())
    bm.add_argument("--objects", default="diffuse,glossy,mixed")
    bm.add_argument("--runs", type=Path, required=True, help="folder of run folders <object>/ (trained if missing)")
    bm.add_argument("--quality", default="standard", choices=["preview", "standard", "high"])
    bm.add_argument("--texture-size", type=int, default=1024, choices=[512, 1024, 2048])
    bm.add_argument("--iterations", type=int, default=3000, help="stage-1 iterations when a run must be trained")
    bm.add_argument("--distill-iterations", type=int, default=1000)
    bm.add_argument("--resolution", type=int, default=128)
    bm.add_argument("--hdri-dir", type=Path, default=Path("../shared/data/hdri"),
                    help="the benchmark's HDRIs, for the Cycles renders of the GLB")
    bm.add_argument("--cycles-views", type=int, default=20, help="test views Cycles renders per HDRI (0: none)")
    bm.add_argument("--cycles-samples", type=int, default=32, help="Cycles samples per pixel (denoised)")
    bm.add_argument("--refine-steps", type=int, default=2,
                    help="albedo refinement through Cycles after the bake, as prd mesh does (0: off)")
    bm.add_argument("--json", type=Path, default=Path("docs/benchmarks/mesh.json"))
    ba = bsub.add_parser("asset", help="a run's baked asset in Cycles (and its Gaussians) against its held-out photos")
    ba.add_argument("run", type=Path, help="a finished run trained with --hold-out N, meshed with prd mesh")
    ba.add_argument("--samples", type=int, default=32, help="Cycles samples per pixel (denoised)")
    ba.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ba.add_argument("--json", type=Path, help="write the record here (e.g. docs/benchmarks/asset.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.stages == 4 and args.distill_iterations < 1:
        # a four-stage run with empty stages 2-4 would end without light or visibility to write
        parser.error("--distill-iterations must be at least 1 (--stages 1 trains the radiance field alone)")
    if args.command == "train" and args.light is not None and (args.stages != 4 or args.resume):
        parser.error("--light belongs to a new four-stage run (a resumed run keeps the light it was started with)")
    from .capture import CaptureError
    from .outputs import OutputFolderError

    try:
        if args.command == "train":
            from .pipeline import run_train
            from .train.distill import DIELECTRIC_PRIOR, DistillConfig

            distill = None
            if args.stages == 4 and not args.resume:
                n = args.distill_iterations
                distill = DistillConfig(stage2=n, stage3=n, stage4=n, real_scene=args.real_scene,
                                        tonemap="aces" if args.real_scene else "srgb",
                                        metallic_weight=DIELECTRIC_PRIOR if args.dielectric else 0.0)
                if args.light is not None:
                    from .train.distill import initial_light

                    distill.known_light = str(args.light.expanduser().resolve())
                    distill.known_light_rotation = args.light_rotation
                    try:
                        initial_light(distill)  # a bad map fails now, not after stage 1
                    except ValueError as exc:
                        print(f"prd: error: {exc}", file=sys.stderr)
                        return 2
            capture = Path(args.capture)
            if not args.resume:  # a bare photo folder gets its poses first (a resumed run reuses OUT/sfm)
                from .sfm import poses_for_training

                capture = poses_for_training(capture, args.out, overwrite=args.overwrite, quiet=args.quiet)
            run_train(
                capture, args.out, device=args.device, iterations=args.iterations,
                resolution=args.resolution, downscale=args.downscale, background=args.background,
                hold_out_every=args.hold_out, resume=args.resume,
                overwrite=args.overwrite or capture != Path(args.capture),
                max_seconds=args.max_seconds, stop_at=args.stop_at, distill=distill, quiet=args.quiet,
            )
            if capture != Path(args.capture):  # the run replaced the manifest that named the poses: name them again
                from .outputs import update_manifest

                update_manifest(args.out, files={"poses": "sfm/sfm.json"})
        elif args.command == "poses":
            from .sfm.run import PosesConfig, run_poses

            cfg = PosesConfig(matcher=args.matcher, camera_model=args.camera_model,
                              max_image_size=args.max_image_size, threads=args.threads)
            run_poses(args.photos, args.out, cfg, overwrite=args.overwrite, quiet=args.quiet)
        elif args.command == "eval":
            from .pipeline import run_eval

            ev = run_eval(args.out, args.device)
            print(json.dumps({"event": "eval", "psnr": ev["psnr"], "ssim": ev["ssim"], "views": len(ev["views"])}))
        elif args.command == "relight":
            from .relight import run_relight

            paths = run_relight(
                args.out, args.hdri, rotation=args.rotation, strength=args.strength, views=args.views,
                dest=args.dest, device=args.device,
            )
            print(json.dumps({"event": "relit", "views": len(paths), "folder": str(paths[0].parent)}))
        elif args.command == "mesh":
            from .asset import bake_asset
            from .asset.refine import STEPS, refine_albedo
            from .asset.render_cycles import CyclesUnavailable, renderer_command

            steps = args.refine_steps
            if steps is not None and steps < 0:
                raise SystemExit("prd: error: --refine-steps must be 0 or more")
            skipped = None
            try:  # before the bake: an explicit request without Blender fails at once
                renderer_command()
            except CyclesUnavailable as exc:
                if steps:
                    raise OutputFolderError(f"--refine-steps {steps} needs Blender: {exc}") from exc
                skipped = f"no Blender to render with ({exc})"
            summary = bake_asset(args.out, quality=args.quality, texture_size=args.texture_size, device=args.device)
            auto, steps = steps is None, STEPS if steps is None else steps
            if skipped or not steps:
                summary["refine"] = {"skipped": skipped or "--refine-steps 0"}
            else:
                try:
                    summary["refine"] = refine_albedo(args.out, steps,
                                                      progress=lambda ev: print(json.dumps(ev), flush=True))
                # The photos moved or Blender failed: by default the baked asset stands as the last step left
                # it (each step rewrites the albedo and the GLB whole); an explicit request fails.
                except (OutputFolderError, RuntimeError) as exc:
                    if not auto:
                        raise
                    summary["refine"] = {"skipped": str(exc)}
            print(json.dumps({"event": "mesh", **summary}))
        elif args.bench == "mesh":
            from .asset.bench import bench_mesh

            bench_mesh(args.data, args.objects.split(","), args.runs, args.quality, args.texture_size,
                       args.iterations, args.distill_iterations, args.resolution, args.json, args.hdri_dir,
                       args.cycles_views, args.cycles_samples, refine_steps=args.refine_steps)
        elif args.bench == "asset":
            from .asset.photo_bench import bench_asset

            bench_asset(args.run, args.samples, args.device, args.json)
        elif args.bench == "raster":
            from .bench.raster import bench_raster

            bench_raster(args.gaussians, args.channels, args.size, args.repeats, args.backends.split(","), args.json)
        elif args.bench == "nvs":
            from .bench.nvs import bench_nvs

            bench_nvs(args.data, args.resolution, args.iterations, args.max_seconds, args.device, args.out, args.json)
        elif args.bench == "sfm":
            from .bench.sfm import bench_sfm

            bench_sfm(args.data, args.work, args.nvs_resolution, args.nvs_iterations, args.device, args.json,
                      args.max_image_size)
        elif args.bench == "relight":
            from .bench.relight import bench_relight

            overrides = {k: v for k, v in (("normal_weight", args.normal_weight),
                                           ("visibility_resolution", args.visibility_resolution)) if v is not None}
            overrides.update(parse_overrides(args.set))
            from .train.stage1 import Stage1Config

            stage1 = parse_overrides(args.set_stage1, Stage1Config, "--set-stage1")
            variants = [v for v in args.variants.split(",") if v]
            if args.rescore is not None:
                from .bench.relight import rescore_relight

                rescore_relight(args.data, args.rescore, args.objects.split(","), args.hdri_dir, args.json,
                                **parse_overrides(args.set))
                return 0
            bench_relight(args.data, args.objects.split(","), variants, args.iterations,
                          args.distill_iterations, args.hdri_dir, args.json, args.stage1_cache, args.seeds,
                          stage1_overrides=stage1, keep=args.keep, known_light=args.known_light, **overrides)
    except (CaptureError, OutputFolderError) as exc:
        print(f"prd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 3
    except Exception as exc:
        if type(exc).__name__ == "Cancelled":
            print(f"prd: {exc}", file=sys.stderr)
            return 3
        print(f"prd: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
