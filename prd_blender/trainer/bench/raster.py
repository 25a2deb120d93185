"""``prd bench raster``: forward + backward time per backend on one random scene, in one run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..raster import choose_backend, rasterization
from ..raster.synthetic import random_scene
from .common import record, table


def _time_once(scene: dict, size: int, backend: str) -> float:
    leaves = {k: v.clone().requires_grad_(k not in ("viewmat", "K")) for k, v in scene.items()}
    t0 = time.perf_counter()
    out = rasterization(
        leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["features"],
        leaves["viewmat"], leaves["K"], size, size, backend=backend,
    )
    loss = out.features.square().sum() + out.alpha.sum() + out.depth.sum()
    loss.backward()
    if backend == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_raster(n: int, channels: int, size: int, repeats: int, backends: list[str], json_path: Path | None) -> dict:
    scene = random_scene(n, channels, size, size, seed=0)
    rows, times = [], {}
    for name in backends:
        backend, _ = choose_backend(name)
        s = {k: v.cuda() for k, v in scene.items()} if backend == "cuda" else scene
        reps = 1 if backend == "reference" else repeats
        _time_once(s, size, backend)  # warm-up: JIT compile / load caches
        ts = [_time_once(s, size, backend) for _ in range(reps)]
        times[backend] = statistics.median(ts)
        rows.append([backend, reps, f"{1000 * times[backend]:.1f}", f"{1000 * min(ts):.1f}"])
    results = {
        "gaussians": n, "channels": channels, "width": size, "height": size,
        "seconds_median": times,
    }
    if "cpu" in times and "reference" in times:
        results["speedup_cpu_vs_reference"] = times["reference"] / times["cpu"]
    print(table(rows, ["backend", "runs", "median ms (fwd+bwd)", "best ms"]))
    if "speedup_cpu_vs_reference" in results:
        print(f"CPU backend is {results['speedup_cpu_vs_reference']:.0f}x faster than the dense PyTorch reference")
    return record(json_path, results)
