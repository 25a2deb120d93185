"""prd_blender: relightable assets from multi-view captures.

This package is both the Blender extension (this file is its entry point) and the home of the
trainer (``prd_blender.trainer``), which runs in its own Python environment without Blender. So this
module must not import ``bpy`` at import time: the trainer imports ``prd_blender.trainer`` through it.
Blender-facing modules are imported inside ``register()``.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Modules (in registration order) whose classes and properties are registered; empty when unregistered.
_registered: list = []


def register() -> None:
    """Register the extension's Blender classes. Calling it twice is harmless."""
    if _registered:
        return
    import atexit

    import bpy

    from . import export, operators, panel, preferences, properties, relight

    # Properties first: the panel and operators refer to Scene.prd and the preferences.
    for mod in (properties, preferences, operators, relight, export, panel):
        for cls in mod.CLASSES:
            bpy.utils.register_class(cls)
        if hasattr(mod, "register"):
            mod.register()
        _registered.append(mod)
    atexit.unregister(operators.cancel_on_exit)
    atexit.register(operators.cancel_on_exit)


def unregister() -> None:
    """Undo ``register()``; harmless when not registered."""
    if not _registered:
        return
    import bpy

    while _registered:
        mod = _registered.pop()
        if hasattr(mod, "unregister"):
            mod.unregister()
        for cls in reversed(mod.CLASSES):
            if getattr(cls, "is_registered", False):
                bpy.utils.unregister_class(cls)
