#!/usr/bin/env bash
# Set up and run the main job on the bundled sample capture: stage-1 training, every 8th view held out.
set -euo pipefail
cd "$(dirname "$0")/.."
PRD_WITH_BLENDER=0 bash scripts/setup_env.sh
OUT=${1:-out/sample}
ARGS=(--out "$OUT" --hold-out 8 --iterations "${PRD_ITERATIONS:-3000}" --distill-iterations "${PRD_DISTILL_ITERATIONS:-500}")
[ -f "$OUT/manifest.json" ] && ARGS+=(--overwrite)
.venv/bin/prd train samples/sample_capture "${ARGS[@]}"
# The deployable asset: mesh, PBR textures and a .glb beside the Gaussians.
.venv/bin/prd mesh "$OUT" --quality preview --texture-size 512
echo "Results in $OUT (manifest.json names every file; mesh.glb is the asset)."
echo "README pictures from it: .venv/bin/python scripts/make_readme_pictures.py $OUT (needs the bpy module)"
