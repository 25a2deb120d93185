"""Progress as JSON lines on stdout (one object per line; the Blender side parses them)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO


class Progress:
    """Writes events to stdout and appends them to ``log_path``. Every event has ``event`` and ``t``."""

    def __init__(self, log_path: Path | None = None, stream: IO[str] | None = None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.quiet = quiet
        self.t0 = time.time()

    def emit(self, event: str, **fields) -> None:
        rec = {"event": event, "t": round(time.time(), 3), **fields}
        line = json.dumps(rec, allow_nan=False, default=float)
        if not self.quiet:
            print(line, file=self.stream, flush=True)
        if self.log:
            self.log.write(line + "\n")
            self.log.flush()

    def close(self) -> None:
        if self.log:
            self.log.close()
            self.log = None
