"""Running the real workflow: `python -m snakemake` in a temporary working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The command line that runs snakemake on the repo's Snakefile in ``workdir``."""
    snakefile = str(REPO / "Snakefile")
    return [sys.executable, "-m", "snakemake", "--snakefile", snakefile, "--directory", str(workdir), *args]


def run_snakemake(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run snakemake on the repo's Snakefile with ``workdir`` as its working directory."""
    cmd = snakemake_command(workdir, *args)
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_config() -> Path:
    return REPO / "tests" / "workflow" / "tiny.yaml"


@pytest.fixture
def smk():
    """``smk(workdir, *args)`` runs snakemake on the repo's Snakefile."""
    return run_snakemake


@pytest.fixture
def smk_command():
    """``smk_command(workdir, *args)`` is the command line ``smk`` runs."""
    return snakemake_command
