"""prd_blender: relightable assets from multi-view captures.

This package is both the Blender extension (this file is its entry point) and the home of the
trainer (``prd_blender.trainer``), which runs in its own Python environment without Blender. So this
module must not import ``bpy`` at import time: the trainer imports ``prd_blender.trainer`` through it.
Blender-facing modules are imported inside ``register()``.
"""

from __future__ import annotations

__version__ = "0.1.0"

_registered: list = []


def register() -> None:
    """Register the extension's Blender classes. Calling it twice is harmless."""
    if _registered:
        return
    # Blender UI classes are added here by the extension modules (panel, operators, preferences).
    _registered.append(True)


def unregister() -> None:
    """Undo ``register()``; harmless when not registered."""
    _registered.clear()
