"""What every benchmark record carries: the command, the machine and the date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

from ..outputs import write_json


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def record(path: Path | None, results: dict) -> dict:
    rec = {
        # `prd ...` and `python -m prd_blender.trainer ...` are the same command
        "command": ("prd " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("prd", "__main__.py")
                    else " ".join(sys.argv)),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        **results,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in kept_experiments(path).items() if k not in rec}  # this run's own entries win
        write_json(path, {**rec, **kept})
    return rec


def kept_experiments(path: Path) -> dict:
    """The ``*_experiments`` entries of the record already at ``path``: each session's hand-kept history.
    A benchmark run refreshes the headline figures and must not drop them (a bare ``prd bench relight``
    once replaced 29 sessions' entries with one ceiling check). A file that is not a JSON object keeps nothing."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in old.items() if k.endswith("_experiments")} if isinstance(old, dict) else {}


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
