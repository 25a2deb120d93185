#!/usr/bin/env bash
# Create .venv with the trainer and the test tools. Idempotent: re-running only fills gaps.
# torch is installed first, on its own, so that nothing pulls the multi-gigabyte CUDA build on a
# machine without an NVIDIA GPU (install the CUDA build of torch plus `pip install gsplat` yourself
# on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
if [ "${PRD_WITH_BLENDER:-1}" = "1" ]; then
  # Blender as a Python module: the Blender-side tests and the sample-capture generator use it.
  .venv/bin/python -m pip install -q "bpy==5.0.1"
fi
