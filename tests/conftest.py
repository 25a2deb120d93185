"""Test-wide settings. Set before anything imports torch or bpy."""

import os
import tempfile
from pathlib import Path

# torch and Numba share the cores; spinning OpenMP workers would slow every test (see trainer/__init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Blender (bpy) must never write into the real user's ~/.config/blender during tests.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="prd-blender-user-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
