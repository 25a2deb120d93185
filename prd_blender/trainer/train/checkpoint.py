"""Checkpoints that resume exactly: parameters, optimiser moments, density statistics, RNG states."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically: a crash or a full disk mid-write leaves the previous checkpoint intact."""
    payload = dict(payload)
    payload["rng"] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    # Serialise in memory first: torch.save reports a full disk as a vague RuntimeError, plain file
    # writes as an OSError we can explain.
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"could not write checkpoint {path} ({exc.strerror}; is the disk full?)") from exc


def load_checkpoint(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    rng = payload.get("rng")
    if rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return payload
