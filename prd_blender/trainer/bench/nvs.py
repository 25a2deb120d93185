"""``prd bench nvs``: stage-1 novel-view PSNR on NeRF Synthetic lego, every 8th view held out."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..pipeline import run_train
from .common import record, table


def bench_nvs(
    data: Path, resolution: int, iterations: int, max_seconds: float, device: str, out: Path | None,
    json_path: Path | None,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = out or Path(tmp) / "run"
        manifest = run_train(
            data, run_dir, device=device, iterations=iterations, resolution=resolution, background=(1, 1, 1),
            hold_out_every=8, max_seconds=max_seconds, quiet=True,
        )
        ev = json.loads((run_dir / "eval.json").read_text())
    res = manifest["result"]
    results = {
        "data": str(data), "resolution": resolution, "hold_out_every": 8, "test_views": len(ev["views"]),
        "iterations": res["iterations"], "psnr": ev["psnr"], "ssim": ev["ssim"], "seconds": res["seconds"],
        "gaussians": res["gaussians"], "device": manifest["backend"],
    }
    print(table(
        [[manifest["backend"], res["iterations"], res["gaussians"], f"{res['seconds']:.0f}", f"{ev['psnr']:.2f}",
          f"{ev['ssim']:.4f}"]],
        ["device", "iterations", "gaussians", "train s", "PSNR dB", "SSIM"],
    ))
    return record(json_path, results)
