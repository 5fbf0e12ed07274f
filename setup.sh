#!/usr/bin/env bash
# Set up a virtual environment in .venv with infogan-cells installed.
#
#   ./setup.sh          the pipeline (torch, snakemake, the package)
#   ./setup.sh --dev    also the test tools, and on Debian as root the system packages the
#                       browser and cluster tests use (chromium, slurm-wlm, munge, npm); then
#                       onnxruntime-web from the npm registry into .web/ for the live explorer
#
# torch: if the venv has none yet, torch==2.13.0 is installed first, from pip's configured index
# (or from TORCH_INDEX_URL when set). Which build that is depends on the index: from PyPI on
# Linux it is the CUDA build (several GB; it also runs on the CPU); a CPU-only machine may prefer
# the CPU wheel: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup.sh. A torch
# already in .venv (say, your own CUDA build) is kept. `infogan-cells train` logs the device
# and precision it chose ("training on cuda in bf16 (...)").
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[ "${1:-}" = "--dev" ] && dev=1
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
    else
        pip install "torch==2.13.0"
    fi
fi
if [ "$dev" = 1 ]; then
    pip install -e ".[dev]"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        need=()
        command -v chromium >/dev/null || need+=(chromium)
        command -v slurmctld >/dev/null || need+=(slurm-wlm)
        command -v munged >/dev/null || need+=(munge)
        command -v npm >/dev/null || need+=(npm)
        if [ ${#need[@]} -gt 0 ]; then
            echo "setup.sh: installing ${need[*]} (Debian packages)" >&2
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        fi
    fi
    # The live explorer's runtime (the version pinned in infogan_cells/report/live.py); without it the
    # report's explorer shows the pictures rendered in advance.
    ort=$(sed -n 's/^ORT_WEB_VERSION = "\(.*\)"$/\1/p' infogan_cells/report/live.py)
    have=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' .web/node_modules/onnxruntime-web/package.json 2>/dev/null || true)
    if [ "$have" != "$ort" ]; then
        if command -v npm >/dev/null; then
            npm install --prefix .web --no-audit --no-fund --loglevel=error "onnxruntime-web@$ort" >/dev/null
        else
            echo "setup.sh: no npm: the report's explorer will not run the generator live" >&2
        fi
    fi
else
    pip install -e .
fi
.venv/bin/python -c "import torch; print('setup.sh: torch', torch.__version__, '(CUDA build, GPU available)' if torch.cuda.is_available() else ('(CUDA build, no GPU found)' if torch.version.cuda else '(CPU build)'))" >&2
echo "setup.sh: ready (.venv/bin/snakemake, .venv/bin/infogan-cells)" >&2
