#!/usr/bin/env bash
# GPU benchmark: the one script to run on a CUDA machine (e.g. the lent H100).
# It installs what the host lacks from wheels carried in bench/gpu/wheels/ (no internet there),
# checks every fast path against fp32, times the variants and prints a table.
# Usage: bash bench/gpu/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-${OUT:-bench/gpu/out}}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu-site${PYTHONPATH:+:$PYTHONPATH}"
if ls bench/gpu/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index --target .gpu-site bench/gpu/wheels/*.whl
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 bench/gpu/gpu_bench.py --out "$OUT" "$@"
