"""A rule's ``threads:`` reach the numeric libraries: the workflow scripts set the thread
variables before numpy and torch read them (workflow/scripts/_checkout.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"

# what a workflow script does under Snakemake: the preamble defines `snakemake`, then the script
# imports _checkout first and the package after it
JOB = """
import sys, types
snakemake = types.SimpleNamespace(threads={threads})
sys.path.insert(0, {scripts!r})
{before}
import _checkout
import os, torch
print(os.environ["OMP_NUM_THREADS"], torch.get_num_threads())
"""


def _run(threads: int, before: str = "", **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = JOB.format(threads=threads, scripts=str(SCRIPTS), before=before)
    return subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_threads_of_the_rule_size_torch_and_openmp():
    # one thread: fewer than the libraries' default on a machine with several cores
    res = _run(1)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "1"]


def test_a_thread_count_the_user_exported_is_kept():
    res = _run(1, OMP_NUM_THREADS="2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "2"


def test_numpy_imported_first_is_refused():
    res = _run(2, before="import numpy")
    assert res.returncode != 0
    assert "import _checkout before numpy or torch" in res.stderr


def test_every_script_imports_checkout_before_the_package():
    for script in sorted(SCRIPTS.glob("*.py")):
        if script.name == "_checkout.py":
            continue
        lines = [line for line in script.read_text().splitlines() if line.startswith(("import ", "from "))]
        first = next(i for i, line in enumerate(lines) if "_checkout" in line)
        assert not any("infogan_cells" in line or "numpy" in line for line in lines[:first]), script.name
