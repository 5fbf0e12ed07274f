#!/usr/bin/env bash
# One-shot, offline, time-boxed check of the CUDA paths (see benchmarks/gpu_check.py for what it
# measures). Runs on a bare GPU machine with its own Python and torch: no pip, no Snakemake, no
# network; PYTHONPATH is this repository. Writes gpu_check.json and gpu_check.md into OUT_DIR.
#
#   bash benchmarks/gpu_check.sh OUT_DIR          # on a CUDA GPU, within 8 minutes
#   bash benchmarks/gpu_check.sh OUT_DIR --cpu    # the same checks at toy sizes on the CPU
#
# PYTHON picks the interpreter (default: python3 on PATH).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: gpu_check.sh OUT_DIR [--cpu]}
shift
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia-smi.csv" 2>/dev/null || true
timeout 480 "$py" "$repo/benchmarks/gpu_check.py" "$out" --budget-s 420 "$@"
