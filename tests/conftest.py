"""Test options and shared fixtures.

Slow, SLURM and GPU tests sit behind options so the default run stays fast on 2 CPU cores:
``--runslow`` and ``--runslurm`` (or INFOGAN_TEST_SLURM=1). Tests reading the real data in
``../shared/data`` skip with a reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")
    parser.addoption("--runslurm", action="store_true", help="run the local SLURM cluster test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    runslow = config.getoption("--runslow")
    runslurm = config.getoption("--runslurm") or os.environ.get("INFOGAN_TEST_SLURM") == "1"
    for item in items:
        if "slow" in item.keywords and not runslow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "slurm" in item.keywords and not runslurm:
            item.add_marker(pytest.mark.skip(reason="starts a SLURM cluster: run with --runslurm"))
        if "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data folder ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture()
def one_thread():
    """torch on one intra-op thread for the test, restored after: tiny networks train faster so
    (OpenMP barriers dominate, worse on a loaded machine), and synthesis runs each pass so."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------
# The tiny synthesis run of tests/synth_runs.py, shared by the synthesis test modules (a module's
# own fixture of the same name, as in test_confidence.py, takes precedence)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from synth_runs import make_run

    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def category_map(tmp_path_factory) -> Path:
    from synth_runs import CATEGORY_MAP

    path = tmp_path_factory.mktemp("analyse") / "category_map.csv"
    path.write_text(CATEGORY_MAP)
    return path


@pytest.fixture(scope="module")
def reference(run_dir, tmp_path_factory) -> Path:
    """The whole data set of synth_runs.CONFIG in one shard, written once per module."""
    from synth_runs import CONFIG

    from infogan_cells.synthesis.synthesise import synthesise

    return synthesise(run_dir, tmp_path_factory.mktemp("ref") / "synth.h5", CONFIG)
