"""Bulk synthesis under faults and bad input: a failed writer or a killed job leaves nothing and
the rerun gives the same bytes; outputs, checkpoints, sizes, shards, labels and priors that cannot
work are refused by name. The tiny run and its reference set come from tests/synth_runs.py."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from synth_runs import (
    CONFIG,
    make_run,
    sha,
)

from infogan_cells.errors import InputError
from infogan_cells.synthesis.gather import gather
from infogan_cells.synthesis.hdf5 import HDF5Writer
from infogan_cells.synthesis.synthesise import synthesise
from infogan_cells.synthesis.validate import validate_file


def test_a_writer_failure_leaves_nothing_and_the_rerun_gives_the_same_bytes(
    run_dir, reference, tmp_path, monkeypatch
):
    original = HDF5Writer.write
    calls = []

    def failing(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        original(self, batch)

    monkeypatch.setattr(HDF5Writer, "write", failing)
    out = tmp_path / "synth.h5"
    threads = torch.get_num_threads()
    with pytest.raises(OSError, match="disk full"):
        synthesise(run_dir, out, CONFIG, tiff_dir=tmp_path / "tiff")
    assert torch.get_num_threads() == threads  # restored after the single-threaded passes
    assert list(tmp_path.iterdir()) == [tmp_path / "tiff"] and list((tmp_path / "tiff").iterdir()) == []
    monkeypatch.setattr(HDF5Writer, "write", original)
    synthesise(run_dir, out, CONFIG)
    assert sha(out) == sha(reference)


def test_a_killed_job_leaves_no_partial_file_and_the_rerun_gives_the_same_bytes(run_dir, reference, tmp_path):
    out = tmp_path / "synth.h5"
    code = textwrap.dedent(f"""
        import os, signal
        from infogan_cells.config import SynthConfig
        from infogan_cells.synthesis.synthesise import synthesise
        from infogan_cells.synthesis.hdf5 import HDF5Writer
        original = HDF5Writer.write
        def write_then_die(self, batch):
            original(self, batch)
            self._f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup can run
        HDF5Writer.write = write_then_die
        synthesise({str(run_dir)!r}, {str(out)!r}, SynthConfig(**{dataclasses.asdict(CONFIG)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    (stale,) = tmp_path.glob(".synth.h5.*.tmp")  # the half-written file, under a temporary name
    assert stale.stat().st_size > 0
    synthesise(run_dir, out, CONFIG)
    assert list(tmp_path.iterdir()) == [out]
    assert sha(out) == sha(reference)


def test_an_existing_output_is_refused_unless_overwrite(run_dir, tmp_path):
    out = tmp_path / "synth.h5"
    out.write_text("precious")
    with pytest.raises(InputError, match="already exists"):
        synthesise(run_dir, out, CONFIG)
    assert out.read_text() == "precious"
    synthesise(run_dir, out, CONFIG, overwrite=True)
    assert validate_file(out) == []
    with pytest.raises(InputError, match="already exists"):
        gather([out], out)


def test_a_checkpoint_that_is_not_ours_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "network-final.pt")
    with pytest.raises(InputError, match="not an infogan-cells network file"):
        synthesise(tmp_path, tmp_path / "out.h5", CONFIG)
    (tmp_path / "other.pt").write_text("not a checkpoint at all")
    with pytest.raises(InputError, match="not a readable infogan-cells network file"):
        synthesise(tmp_path / "other.pt", tmp_path / "out.h5", CONFIG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no network-final.pt"):
        synthesise(tmp_path / "empty", tmp_path / "out.h5", CONFIG)


def test_a_truncated_checkpoint_is_refused(run_dir, tmp_path):
    data = (run_dir / "network-final.pt").read_bytes()
    (tmp_path / "network-final.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable infogan-cells network file"):
        synthesise(tmp_path, tmp_path / "out.h5", CONFIG)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_positive(run_dir, tmp_path, n):
    with pytest.raises(InputError, match=f"synthesis.n: {n} must be >= 1"):
        synthesise(run_dir, tmp_path / "out.h5", dataclasses.replace(CONFIG, n=n))


@pytest.mark.parametrize("shard", [(4, 4), (-1, 4), (0, 0), (1, 1)])
def test_a_shard_out_of_range_is_refused(run_dir, tmp_path, shard):
    with pytest.raises(InputError, match="out of range"):
        synthesise(run_dir, tmp_path / "out.h5", CONFIG, shard=shard)


def test_an_unknown_label_name_is_refused(run_dir, tmp_path, category_map):
    config = dataclasses.replace(CONFIG, labels=["ring", "gametocyte"])
    with pytest.raises(
        InputError, match="unknown label name 'gametocyte'.*known: ring, schizont, uninfected"
    ):
        synthesise(run_dir, tmp_path / "out.h5", config, category_map=category_map)
    with pytest.raises(InputError, match="label names need a category map"):
        synthesise(run_dir, tmp_path / "out.h5", config)


def test_prior_proportions_need_a_learned_prior(tmp_path):
    run = make_run(tmp_path / "run", meta={"category_prior": None})
    with pytest.raises(InputError, match="no learned category_prior"):
        synthesise(run, tmp_path / "out.h5", dataclasses.replace(CONFIG, proportions="prior"))


def test_gather_refuses_shards_of_different_data_sets_or_a_missing_shard(run_dir, tmp_path, reference):
    a = [synthesise(run_dir, tmp_path / f"a{i}.h5", CONFIG, shard=(i, 3)) for i in range(3)]
    b1 = synthesise(run_dir, tmp_path / "b1.h5", dataclasses.replace(CONFIG, seed=5), shard=(1, 3))
    with pytest.raises(InputError, match="config differs"):
        gather([a[0], b1, a[2]], tmp_path / "x.h5")
    with pytest.raises(InputError, match=r"expected shards 0..2 once each; missing \[1\]"):
        gather([a[0], a[2]], tmp_path / "x.h5")
    with pytest.raises(InputError, match="expected shards 0..2 once each; missing"):
        gather([a[0], a[0], a[2]], tmp_path / "x.h5")
    with pytest.raises(InputError, match="is a 'master' file, not a shard"):
        gather([gather(a, tmp_path / "m.h5")], tmp_path / "x.h5")
    with pytest.raises(InputError, match="not a valid synthesis shard"):
        gather([run_dir / "network-final.pt", a[1], a[2]], tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
