"""Running the real workflow: `python -m snakemake` in a temporary working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run snakemake on the repo's Snakefile with ``workdir`` as its working directory."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_config() -> Path:
    return REPO / "tests" / "workflow" / "tiny.yaml"


@pytest.fixture
def smk():
    """``smk(workdir, *args)`` runs snakemake on the repo's Snakefile."""
    return run_snakemake
