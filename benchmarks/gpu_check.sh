#!/usr/bin/env bash
# Run the default pipeline with the GPU preset on a machine with a CUDA GPU and record training
# images/s and GPU memory. The project never needs a GPU; this checks the CUDA path when one is
# there. Usage (from the repo root, after ./setup.sh with a CUDA build of torch):
#
#   bash benchmarks/gpu_check.sh [WORKDIR]
#
# Prints a markdown table row for docs/benchmarks.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
py=${PYTHON:-$repo/.venv/bin/python}
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
mkdir -p "$work"
mem_log="$work/gpu_memory.csv"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -l 1 >"$mem_log" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT
start=$(date +%s)
"$py" -m snakemake --snakefile "$repo/Snakefile" --directory "$work" --configfile "$repo/config/gpu.yaml" \
    --cores "$(nproc)" --workflow-profile none
end=$(date +%s)
kill $smi 2>/dev/null || true
"$py" - "$work" "$mem_log" "$((end - start))" <<'PY'
import json, sys
from pathlib import Path
work, mem_log, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
import torch
ticks = [json.loads(line) for p in sorted(work.glob("results/train/seed*/stats.jsonl")) for line in p.open()]
rates = [t["images_per_s"] for t in ticks if t.get("images_per_s")]
mem = [float(line.split(",")[1]) for line in mem_log.read_text().splitlines() if "," in line]
peak = max((t.get("gpu_max_memory_mb") or 0) for t in ticks) if ticks else 0
print("| GPU | pipeline wall s | train images/s (median tick) | torch peak MiB | nvidia-smi peak MiB |")
print("| --- | ---: | ---: | ---: | ---: |")
rates.sort()
print(f"| {torch.cuda.get_device_name(0)} | {seconds} | {rates[len(rates)//2] if rates else 'n/a'} | "
      f"{peak or 'n/a'} | {max(mem) if mem else 'n/a'} |")
PY
