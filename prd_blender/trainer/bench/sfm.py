"""``prd bench sfm``: ``prd poses`` on NeRF Synthetic lego with the poses withheld, scored against them.

1. Accuracy: the photos (train split, symlinked under zero-padded names so that name order is the json's
   frame order) go through ``run_poses``; the recovered cameras are aligned to the true ones by the
   least-squares similarity of their centres (Umeyama), then every camera's rotation error (degrees) and
   centre error are measured. Scene radius: the largest distance of a true camera centre from the
   centroid of all of them (4.03 for lego).
2. Downstream effect: stage-1 novel-view PSNR, every 8th view held out, trained twice with the same
   settings and seed: on the recovered model (held-out views use their recovered poses), and on a COLMAP
   model holding the *true* poses and intrinsics plus the same sparse points moved into the true frame by
   the alignment. Both runs therefore start from the same point cloud and go through the same loader;
   they differ only in the cameras (and the recovered run's undistortion, if any).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..capture.colmap import ColmapCamera, ColmapImage, read_model, rotmat_to_qvec, write_model
from ..capture.transforms import gl_cam_to_world_to_cv_world_to_cam
from ..capture.types import CaptureError
from ..sfm.align import pose_errors
from ..sfm.run import PosesConfig, run_poses
from .common import record, table


def _truth(data: Path) -> tuple[list[tuple[str, Path, np.ndarray]], float, int]:
    """(photo name, image file, true world-to-cam) per train frame, the true focal length and image width."""
    path = data / "transforms_train.json"
    if not path.is_file():
        raise CaptureError(f"{data} has no transforms_train.json (expected NeRF Synthetic lego).")
    meta = json.loads(path.read_text(encoding="utf-8"))
    frames = []
    for k, f in enumerate(meta["frames"]):
        src = (data / f["file_path"]).with_suffix(".png")
        frames.append((f"r_{k:03d}.png", src, gl_cam_to_world_to_cv_world_to_cam(np.array(f["transform_matrix"]))))
    from PIL import Image

    with Image.open(frames[0][1]) as im:
        width = im.size[0]
    focal = 0.5 * width / np.tan(0.5 * float(meta["camera_angle_x"]))
    return frames, focal, width


def bench_sfm(
    data: Path, work: Path | None, nvs_resolution: int, nvs_iterations: int, device: str, json_path: Path | None,
    max_image_size: int = 400,
) -> dict:
    data = Path(data).expanduser()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work) if work else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        frames, true_focal, width = _truth(data)
        photos = root / "photos"
        photos.mkdir(exist_ok=True)
        for name, src, _ in frames:  # images only: the solver never sees transforms_train.json
            if not (photos / name).exists():
                os.symlink(src.resolve(), photos / name)

        cfg = PosesConfig(max_image_size=max_image_size)
        t = time.time()
        sfm = run_poses(photos, root / "poses", cfg, overwrite=True, quiet=True)
        sfm_seconds = time.time() - t

        model = read_model(root / "poses" / "sparse" / "0")
        est = {im.name: im.world_to_cam() for im in model.images}
        names = [n for n, _, _ in frames if n in est]
        truth = {n: w for n, _, w in frames}
        err = pose_errors([est[n] for n in names], [truth[n] for n in names])
        sim = err["similarity"]
        scale = float(np.cbrt(np.linalg.det(sim[:3, :3])))
        up_in_truth = sim[:3, :3] @ [0.0, 0.0, 1.0] / scale  # our +Z, seen in the true (Z-up) frame
        up_error = float(np.degrees(np.arccos(np.clip(up_in_truth[2], -1.0, 1.0))))
        cam = next(iter(model.cameras.values()))
        focal = float(cam.params[0]) * width / cam.width
        results = {
            "data": str(data), "photos": len(frames), "registered": len(names),
            "unregistered": sfm["unregistered"], "max_image_size": max_image_size, "matcher": sfm["matcher"],
            "camera_model": cfg.camera_model, "estimated_camera": sfm["camera"],
            "rotation_error_deg": {"median": float(np.median(err["rotation_deg"])),
                                   "mean": float(np.mean(err["rotation_deg"])),
                                   "max": float(np.max(err["rotation_deg"]))},
            "centre_error_percent_of_radius": {
                "median": float(100 * np.median(err["centre"]) / err["radius"]),
                "mean": float(100 * np.mean(err["centre"]) / err["radius"]),
                "max": float(100 * np.max(err["centre"]) / err["radius"])},
            "scene_radius": err["radius"],
            "scene_radius_definition": "max distance of a true camera centre from the centroid of the true centres",
            "focal_error_percent": float(100 * (focal - true_focal) / true_focal),
            "up_error_deg": up_error, "up_method": sfm["normalization"]["up_method"],
            "points": sfm["points"], "mean_reprojection_error_px": sfm["mean_reprojection_error_px"],
            "sfm_seconds": round(sfm_seconds, 1), "sfm_seconds_by_step": sfm["seconds"],
        }
        rows = [[len(frames), len(names), f"{results['rotation_error_deg']['median']:.3f}",
                 f"{results['centre_error_percent_of_radius']['median']:.3f}",
                 f"{results['focal_error_percent']:+.2f}", f"{up_error:.1f}", f"{sfm_seconds:.0f}"]]
        print(table(rows, ["photos", "registered", "rot median deg", "centre median % r", "focal err %",
                           "up err deg", "seconds"]))

        if nvs_resolution > 0:
            results["nvs"] = _nvs(root, model, names, truth, true_focal, width, sim, nvs_resolution,
                                  nvs_iterations, device)
            n = results["nvs"]
            print(table([[k, n[k]["iterations"], f"{n[k]['seconds']:.0f}", f"{n[k]['psnr']:.2f}",
                          f"{n[k]['ssim']:.4f}"] for k in ("true_poses", "recovered_poses")],
                        ["poses", "iterations", "train s", "PSNR dB", "SSIM"]))
            print(f"PSNR difference (recovered - true): {n['psnr_difference_db']:+.2f} dB")
        return record(json_path, results)


def _nvs(root: Path, model, names: list[str], truth: dict, true_focal: float, width: int, sim: np.ndarray,
         resolution: int, iterations: int, device: str) -> dict:
    from ..pipeline import run_train

    # the true-pose twin of the recovered model: same images (the original photos), same points
    true_dir = root / "truth"
    (true_dir / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    if not (true_dir / "images").exists():
        os.symlink((root / "photos").resolve(), true_dir / "images")
    h = width  # lego is square
    cams = [ColmapCamera(1, "PINHOLE", width, h, (true_focal, true_focal, width / 2, h / 2))]
    imgs = [ColmapImage(k + 1, rotmat_to_qvec(truth[n][:3, :3]), truth[n][:3, 3], 1, n) for k, n in enumerate(names)]
    pts = model.points @ sim[:3, :3].T + sim[:3, 3]
    write_model(true_dir / "sparse" / "0", cams, imgs, pts, model.colors)

    out = {}
    for key, capture in (("true_poses", true_dir), ("recovered_poses", root / "poses")):
        run_dir = root / f"nvs_{key}"
        manifest = run_train(capture, run_dir, device=device, iterations=iterations, resolution=resolution,
                             background=(1.0, 1.0, 1.0), hold_out_every=8, overwrite=True, quiet=True)
        ev = json.loads((run_dir / "eval.json").read_text())
        res = manifest["result"]
        out[key] = {"psnr": ev["psnr"], "ssim": ev["ssim"], "iterations": res["iterations"],
                    "seconds": res["seconds"], "gaussians": res["gaussians"], "test_views": len(ev["views"])}
    out.update(resolution=resolution, hold_out_every=8, init="the SfM sparse points (same for both runs)",
               psnr_difference_db=out["recovered_poses"]["psnr"] - out["true_poses"]["psnr"])
    return out
