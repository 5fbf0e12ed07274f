"""The one-shot GPU check runs end to end on the CPU at toy sizes, as it would on a bare GPU
machine: the repository on PYTHONPATH, no Snakemake, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_and_reports_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = [
        "smoke_rgb_fp32",
        "smoke_one_channel_fp32",
        "smoke_rgb_bf16",
        "smoke_one_channel_bf16",
        "host_syncs",
        "train_throughput",
        "synthesis",
        "synthesis_identity",
    ]
    assert {k: results[k]["status"] for k in sections} == dict.fromkeys(sections, "ok")
    assert results["smoke_rgb_bf16"]["precision"] == "bf16" and results["smoke_rgb_bf16"]["samples"] >= 1
    assert all(
        v["counted_calls_per_step"] == 0 for v in results["host_syncs"].values() if isinstance(v, dict)
    )
    assert results["synthesis_identity"]["bit_identical"] is True
    rates = results["train_throughput"]
    assert all(v["images_per_s"] > 0 for k, v in rates.items() if k.startswith("default_widths"))
    assert results["synthesis"]["hdf5_gzip_mib"] < results["synthesis"]["hdf5_none_mib"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| synthesis_identity (ok" in md and "bit_identical: true" in md
