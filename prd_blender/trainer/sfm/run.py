"""``prd poses``: photos in, a posed pinhole COLMAP model out (pycolmap, on the CPU).

Pipeline: validate and normalise the photos (photos.py) -> SIFT features -> matching (exhaustive for
small sets, sequential otherwise, spatial on request) -> incremental mapping -> undistortion to a
pinhole camera -> gravity/centre/scale normalisation (align.py) -> ``OUT/sparse/0`` + ``OUT/images``,
which :func:`prd_blender.trainer.capture.load_capture` reads like any COLMAP project.

Output folder:
- ``images/``: the registered photos, upright (EXIF applied), undistorted, alpha kept
- ``sparse/0/``: cameras.bin (PINHOLE), images.bin, points3D.bin in the normalised frame
- ``sfm.json``: what happened (registered and unregistered photos, camera, timings) and the similarity
  ``normalized_from_colmap`` that maps the raw reconstruction to the written one
- ``unregistered/``: photos that could not be posed (moved out of images/ so folder and model agree)
- ``colmap/``: database.db and the raw model (colmap/sparse/0, original camera with distortion, photos'
  own frame), for COLMAP-based tools
- ``progress.jsonl``: the ``poses`` events also printed on stdout
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..capture.colmap import ColmapCamera, ColmapImage, camera_intrinsics, rotmat_to_qvec, write_model
from ..capture.distortion import distort_points, remap, undistort_map
from ..capture.images import read_image_array
from ..capture.types import CaptureError
from ..train.progress import Progress
from .align import normalising_similarity, transform_world_to_cam
from .photos import Photo, normalise_photos, validate_photos

MATCHERS = ("auto", "exhaustive", "sequential", "spatial")
CAMERA_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE")
OWN = ("images", "sparse", "colmap", "unregistered", "sfm.json", "progress.jsonl")
# below this largest pixel shift undistorting would only blur (bilinear resampling) for nothing
UNDISTORT_MIN_SHIFT_PX = 0.1


@dataclass
class PosesConfig:
    """Settings of ``prd poses`` (recorded in sfm.json)."""

    matcher: str = "auto"
    exhaustive_limit: int = 150  # auto: exhaustive up to this many photos (n^2/2 pairs), sequential above
    sequential_overlap: int = 10
    camera_model: str = "SIMPLE_RADIAL"
    max_image_size: int = 1024  # SIFT works on images downscaled to this longer side (speed on CPUs)
    max_features: int = 4096  # matching time grows with its square
    threads: int = 0  # 0: all cores
    seed: int = 0
    min_registered: float = 0.5  # fail when fewer than this fraction of the photos can be posed
    target_distance: float = 4.0  # median camera distance from the object after normalising

    def check(self) -> None:
        if self.matcher not in MATCHERS:
            raise CaptureError(f"matcher must be one of {', '.join(MATCHERS)}, got {self.matcher!r}.")
        if self.camera_model not in CAMERA_MODELS:
            raise CaptureError(f"camera model must be one of {', '.join(CAMERA_MODELS)}, got {self.camera_model!r}.")
        if not 0.0 < self.min_registered <= 1.0:
            raise CaptureError(f"min_registered must be in (0, 1], got {self.min_registered}.")
        if self.max_image_size < 64 or self.max_features < 100 or self.target_distance <= 0:
            raise CaptureError("max_image_size >= 64, max_features >= 100 and target_distance > 0 are required.")


def is_poses_folder(folder: Path) -> bool:
    return (folder / "sfm.json").is_file()


def prepare_poses_output(out: Path, overwrite: bool) -> None:
    """``out`` must be new, empty, or an earlier ``prd poses`` result (replaced only with ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise CaptureError(f"output path {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        # a folder holding only what we write is ours too (e.g. left by a run that failed half way)
        if not is_poses_folder(out) and not all(p.name in OWN for p in out.iterdir()):
            raise CaptureError(f"output folder {out} is not empty and holds no earlier poses; choose a new folder.")
        if not overwrite:
            raise CaptureError(f"output folder {out} already holds poses; pass --overwrite to recompute them.")
        for name in OWN:  # only what we write, never anything else the user put there
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_poses(
    photo_dir: str | Path,
    out: str | Path,
    config: PosesConfig | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    quiet: bool = False,
) -> dict:
    """Photos in ``photo_dir`` -> posed pinhole COLMAP project in ``out``; returns the sfm.json record.

    Raises CaptureError (a message naming the photos concerned) for unusable input.
    """
    import pycolmap  # heavy, and only this command needs it

    # COLMAP's per-image INFO lines would bury the JSON events and real warnings in the job log
    if not os.environ.get("PRD_COLMAP_VERBOSE"):
        pycolmap.logging.minloglevel = pycolmap.logging.WARNING
    cfg = config or PosesConfig()
    cfg.check()
    photo_dir, out = Path(photo_dir).expanduser(), Path(out)
    photos = validate_photos(photo_dir)  # before touching the output folder: bad input changes nothing
    prepare_poses_output(out, overwrite)
    own_progress = progress is None
    progress = progress or Progress(out / "progress.jsonl", quiet=quiet)
    t0 = time.time()
    timings: dict[str, float] = {}
    threads = cfg.threads or os.cpu_count() or 1
    try:
        matcher = cfg.matcher
        if matcher == "auto":
            matcher = "exhaustive" if len(photos) <= cfg.exhaustive_limit else "sequential"
        w, h = photos[0].width, photos[0].height
        progress.emit("poses", step="photos", photos=len(photos), width=w, height=h, matcher=matcher,
                      rotated=sum(p.orientation != 1 for p in photos), alpha=photos[0].has_alpha)
        work = out / "colmap"
        images = out / "images"
        sift_dir = work / "sift_images" if any(p.has_alpha for p in photos) else None
        normalise_photos(photos, images, sift_dir)
        timings["photos"] = time.time() - t0

        pycolmap.set_random_seed(cfg.seed)
        db_path = work / "database.db"
        t = time.time()
        _extract(pycolmap, db_path, sift_dir or images, photos, cfg, threads, progress)
        timings["features"] = time.time() - t

        t = time.time()
        progress.emit("poses", step="matching", matcher=matcher,
                      pairs=len(photos) * (len(photos) - 1) // 2 if matcher == "exhaustive" else None)
        _match(pycolmap, db_path, matcher, cfg, threads)
        db = pycolmap.Database.open(db_path)
        # pairs whose matches survived geometric verification (num_verified_image_pairs counts every pair tried)
        verified = sum(len(g.inlier_matches) > 0 for g in db.read_two_view_geometries()[1])
        db.close()
        timings["matching"] = time.time() - t
        progress.emit("poses", step="matched", verified_pairs=verified, seconds=round(timings["matching"], 1))

        t = time.time()
        rec, others = _map(pycolmap, db_path, sift_dir or images, work / "sparse", photos, cfg, threads, progress,
                           verified)
        timings["mapping"] = time.time() - t

        registered = {rec.image(i).name for i in rec.reg_image_ids()}
        missing = [p.name for p in photos if p.name not in registered]
        need = max(3, int(np.ceil(cfg.min_registered * len(photos))))
        if len(registered) < need:
            raise CaptureError(
                f"{photo_dir}: only {len(registered)} of {len(photos)} photos could be posed (need {need}). "
                f"Not registered: {_names(missing)}. {_advice(others, (w, h))}"
            )
        if missing:
            progress.emit("poses", step="unregistered", count=len(missing), names=missing,
                          message=f"{len(missing)} photo(s) could not be posed and are left out: {_names(missing)}")
            (out / "unregistered").mkdir(exist_ok=True)
            for name in missing:
                shutil.move(str(images / name), out / "unregistered" / name)

        t = time.time()
        result = _write(rec, photos, images, out, cfg, progress)
        timings["undistort_and_write"] = time.time() - t
        if sift_dir is not None:
            shutil.rmtree(sift_dir)
        timings["total"] = time.time() - t0
        result.update(
            format="prd-poses", version=1, photos=str(photo_dir.resolve()), photo_count=len(photos),
            registered=len(registered), unregistered=missing, other_models=others, matcher=matcher,
            verified_pairs=verified, config=asdict(cfg), threads=threads,
            pycolmap=pycolmap.__version__, seconds={k: round(v, 2) for k, v in timings.items()},
        )
        from ..outputs import write_json

        write_json(out / "sfm.json", result)
        progress.emit("poses", step="done", registered=len(registered), photos=len(photos),
                      points=result["points"], seconds=round(timings["total"], 1))
        return result
    except BaseException as exc:
        progress.emit("error", kind=type(exc).__name__, message=str(exc))
        raise
    finally:
        if own_progress:
            progress.close()


def _names(names: list[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _advice(others: list[list[str]], size: tuple[int, int] | None = None) -> str:
    small = ""
    if size is not None and max(size) < 500:
        small = f" These photos are only {size[0]}x{size[1]} pixels: SIFT finds few features in small images."
    if others:
        return (f"The photos fall into {len(others) + 1} groups that share no features with each other: add "
                "photos that bridge them (more overlap between neighbouring shots)." + small)
    return ("Photos need to overlap (each part of the object seen in 3+ photos from angles 10-20 degrees apart), "
            "be sharp, and show texture; plain, shiny or transparent objects give too few features." + small)


def _extract(pycolmap, db_path: Path, image_dir: Path, photos: list[Photo], cfg: PosesConfig, threads: int,
             progress: Progress) -> None:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    opts = pycolmap.FeatureExtractionOptions()
    opts.num_threads = threads
    opts.max_image_size = cfg.max_image_size
    opts.sift.max_num_features = cfg.max_features
    # chunks only to report progress; images are imported up front so all of them share one camera
    db_path.parent.mkdir(parents=True, exist_ok=True)
    pycolmap.Database.open(db_path).close()  # import_images wants an existing database
    pycolmap.import_images(db_path, image_dir, camera_mode=pycolmap.CameraMode.SINGLE,
                           image_names=[p.name for p in photos], options=reader)
    chunk = max(4, len(photos) // 10)
    for start in range(0, len(photos), chunk):
        names = [p.name for p in photos[start:start + chunk]]
        pycolmap.extract_features(db_path, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=opts, device=pycolmap.Device.cpu)
        progress.emit("poses", step="features", done=start + len(names), total=len(photos))
    db = pycolmap.Database.open(db_path)
    try:
        counts = {db.read_image_with_name(p.name).image_id: 0 for p in photos}
        counts = {i: db.num_keypoints_for_image(i) for i in counts}
        cams = db.num_cameras()
    finally:
        db.close()
    if cams != 1:
        raise RuntimeError(f"feature extraction created {cams} cameras instead of one")
    few = [p.name for p, c in zip(photos, counts.values(), strict=True) if c < 50]
    if few:
        progress.emit("poses", step="few_features", names=few,
                      message=f"{len(few)} photo(s) have fewer than 50 features (blurred, dark or textureless): "
                              f"{_names(few)}")


def _match(pycolmap, db_path: Path, matcher: str, cfg: PosesConfig, threads: int) -> None:
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = threads
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=opts, device=pycolmap.Device.cpu)
    elif matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = threads
        pycolmap.match_sequential(db_path, matching_options=opts, pairing_options=pairing,
                                  device=pycolmap.Device.cpu)
    else:  # spatial: needs GPS positions (pose priors) that the photos' EXIF provides
        db = pycolmap.Database.open(db_path)
        priors = db.num_pose_priors()
        db.close()
        if priors == 0:
            raise CaptureError(
                "Spatial matching needs GPS positions in the photos' EXIF, and none of them has one. Use "
                "--matcher exhaustive (up to ~150 photos) or sequential (photos named in capture order)."
            )
        pairing = pycolmap.SpatialPairingOptions()
        pairing.num_threads = threads
        pycolmap.match_spatial(db_path, matching_options=opts, pairing_options=pairing, device=pycolmap.Device.cpu)


def _map(pycolmap, db_path: Path, image_dir: Path, sparse: Path, photos: list[Photo], cfg: PosesConfig,
         threads: int, progress: Progress, verified: int):
    """Incremental mapping; returns the largest model and the image names of any other models."""
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = threads
    opts.random_seed = cfg.seed
    opts.mapper.random_seed = cfg.seed
    opts.triangulation.random_seed = cfg.seed
    opts.min_model_size = 3  # COLMAP's default of 10 would silently drop small (test-sized) captures
    sparse.mkdir(parents=True, exist_ok=True)
    count = [0]

    def next_image() -> None:
        count[0] += 1
        if count[0] % max(1, len(photos) // 20) == 0:
            # COLMAP's callback fires per registration attempt, not per success: report attempts
            progress.emit("poses", step="mapping", attempts=count[0], total=len(photos))

    progress.emit("poses", step="mapping", attempts=0, total=len(photos))
    models = pycolmap.incremental_mapping(db_path, image_dir, sparse, opts, next_image_callback=next_image)
    if not models:
        raise CaptureError(
            f"No reconstruction: no pair of photos could start one ({verified} photo pairs matched). "
            + _advice([], (photos[0].width, photos[0].height))
        )
    ordered = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
    others = [sorted(r.image(i).name for i in r.reg_image_ids()) for r in ordered[1:]]
    return ordered[0], others


def _write(rec, photos: list[Photo], images: Path, out: Path, cfg: PosesConfig, progress: Progress) -> dict:
    """Undistort the registered photos in place, normalise the frame and write ``sparse/0``."""
    cams = {}
    for cam_id, cam in rec.cameras.items():
        cams[cam_id] = ColmapCamera(cam_id, cam.model.name, cam.width, cam.height, tuple(map(float, cam.params)))
    reg = sorted((rec.image(i) for i in rec.reg_image_ids()), key=lambda im: im.name)
    w2cs = [np.vstack([im.cam_from_world().matrix(), [0.0, 0.0, 0.0, 1.0]]) for im in reg]
    pts = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    cols = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)

    norm = normalising_similarity(w2cs, pts, cfg.target_distance)
    progress.emit("poses", step="aligned", up=norm.up_method, up_agreement=round(norm.up_agreement, 3),
                  centre=norm.centre_method, scale=norm.scale)

    pinhole: dict[int, ColmapCamera] = {}
    camera_info = {}
    for cam_id, cam in cams.items():
        K, coeffs = camera_intrinsics(cam, f"reconstructed camera {cam_id}")
        shift = _max_shift_px(cam.width, cam.height, K, coeffs)
        smap = undistort_map(cam.width, cam.height, K, coeffs) if shift >= UNDISTORT_MIN_SHIFT_PX else None
        pinhole[cam_id] = ColmapCamera(cam_id, "PINHOLE", cam.width, cam.height,
                                       (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        camera_info[cam_id] = (smap, {"model": cam.model, "params": list(cam.params), "width": cam.width,
                                      "height": cam.height, "max_distortion_px": round(shift, 3),
                                      "undistorted": smap is not None, "pinhole": list(pinhole[cam_id].params)})
    for k, im in enumerate(reg):
        smap = camera_info[im.camera_id][0]
        if smap is not None:
            _undistort_file(images / im.name, smap)
        if (k + 1) % max(1, len(reg) // 10) == 0 and any(c[0] is not None for c in camera_info.values()):
            progress.emit("poses", step="undistort", done=k + 1, total=len(reg))

    colmap_images = []
    for k, (im, w2c) in enumerate(zip(reg, w2cs, strict=True)):
        new = transform_world_to_cam(w2c, norm.matrix)
        colmap_images.append(ColmapImage(k + 1, rotmat_to_qvec(new[:3, :3]), new[:3, 3], im.camera_id, im.name))
    new_pts = pts @ norm.matrix[:3, :3].T + norm.matrix[:3, 3]
    write_model(out / "sparse" / "0", list(pinhole.values()), colmap_images, new_pts, cols, binary=True)
    source = {p.name: p.path.name for p in photos}
    return {
        "normalization": norm.to_dict(),
        "camera": camera_info[reg[0].camera_id][1],
        "points": int(len(pts)),
        "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
        "images": [{"name": im.name, "photo": source[im.name]} for im in reg],
    }


def _max_shift_px(width: int, height: int, K: np.ndarray, coeffs: np.ndarray | None) -> float:
    """Largest distance, in pixels, between a pixel and where the lens model moves it (checked on the border)."""
    if coeffs is None:
        return 0.0
    u = np.concatenate([np.linspace(0, width, 64), np.linspace(0, width, 64), np.zeros(64), np.full(64, width)])
    v = np.concatenate([np.zeros(64), np.full(64, height), np.linspace(0, height, 64), np.linspace(0, height, 64)])
    xy = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]], axis=-1)
    d = distort_points(xy, coeffs)
    return float(np.max(np.hypot((d[:, 0] - xy[:, 0]) * K[0, 0], (d[:, 1] - xy[:, 1]) * K[1, 1])))


def _undistort_file(path: Path, smap) -> None:
    """Resample one photo to the pinhole camera, in place, premultiplying alpha so edges do not fringe."""
    from PIL import Image

    arr = read_image_array(path)
    alpha = arr.shape[2] == 4
    if alpha:
        arr[..., :3] *= arr[..., 3:]
    arr = remap(arr, smap)
    if alpha:
        a = np.clip(arr[..., 3:], 1e-6, None)
        arr[..., :3] = np.where(arr[..., 3:] > 1e-6, arr[..., :3] / a, 0.0)
    img = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=95, subsampling=0)
    else:
        img.save(path)
