"""The trainer: a bpy-free program that turns a multi-view capture into Gaussians, light and materials.

It runs in its own Python environment (torch, numba, optionally gsplat) and talks to Blender only
through files and JSON lines on stdout. Nothing in this package may import ``bpy``.
"""

import os

# torch's and Numba's OpenMP thread pools alternate on the same cores every iteration; with the
# default spin-waiting each steals the cores from the other (measured: a 4 ms projection took 125 ms
# after a Numba kernel). It must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
