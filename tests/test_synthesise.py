"""Bulk synthesis: the seed is a sample's identity, shards join into the whole, what gets made and
the file it goes to. Faults and bad input: tests/test_synthesise_faults.py.

Every test builds a tiny run directory (16 px generator, random weights and BatchNorm statistics,
so that pixels are far from trivial) instead of training one (tests/synth_runs.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from synth_runs import (
    CATEGORY_MAP,
    CONFIG,
    PRIOR,
    assert_same,
    read_all,
)

from infogan_cells import __version__
from infogan_cells.cli import main
from infogan_cells.config import to_dict
from infogan_cells.model.checkpoint import file_sha256, load_generator
from infogan_cells.model.latent import to_input
from infogan_cells.model.networks import Generator
from infogan_cells.synthesis.gather import gather
from infogan_cells.synthesis.generate import forward, sample_latents
from infogan_cells.synthesis.plan import make_plan
from infogan_cells.synthesis.synthesise import synthesise
from infogan_cells.synthesis.tiff import image_tiff_path
from infogan_cells.synthesis.validate import validate_file

# --------------------------------------------------------------------------------------
# The seed is the sample's identity


def test_generator_rows_do_not_depend_on_their_neighbours(run_dir):
    """What the micro-batch guarantee rests on: at a fixed shape and thread count, a row's
    output depends on that row alone (the padding's values, the neighbours' values)."""
    G, spec, _ = load_generator(run_dir)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, spec.input_dim, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            base = G(x)
            for fill in (torch.zeros(8, spec.input_dim), torch.randn(8, spec.input_dim, generator=g)):
                other = fill.clone()
                other[3] = x[3]
                assert torch.equal(G(other)[3], base[3])
    finally:
        torch.set_num_threads(threads)


def latents(run_dir: Path, n: int) -> tuple[Generator, torch.Tensor]:
    G, spec, meta = load_generator(run_dir)
    plan = make_plan(spec, meta, CONFIG, per_category=False, category_map=None)
    return G, to_input(spec, sample_latents(spec, plan, CONFIG, np.arange(n)))


def run_forward(G: Generator, x: torch.Tensor, start: int, stop: int, micro_batch: int = 8) -> torch.Tensor:
    return torch.cat(
        list(forward(G, x[start:stop], np.arange(start, stop), micro_batch, torch.device("cpu")))
    )


def test_a_sample_is_bit_identical_in_any_batch_or_shard(run_dir, one_thread):
    """The generator's float output itself, before rounding to uint8, is identical."""
    G, x = latents(run_dir, 30)
    whole = run_forward(G, x, 0, 30)
    ones = torch.cat([run_forward(G, x, k, k + 1) for k in range(30)])
    shards = torch.cat([run_forward(G, x, a, b) for a, b in ((0, 7), (7, 15), (15, 22), (22, 30))])
    assert torch.equal(whole, ones)
    assert torch.equal(whole, shards)


def test_without_micro_batches_the_batch_shape_or_thread_count_changes_a_sample(run_dir, one_thread):
    """Why micro-batches and single-threaded passes: plain batching rounds differently (~1e-8),
    which flips a uint8 pixel now and then (a few per 200 images at 16 px)."""
    G, x = latents(run_dir, 30)
    with torch.no_grad():
        whole = G(x)
        ones = torch.cat([G(x[k : k + 1]) for k in range(30)])
        torch.set_num_threads(2)
        two_threads = G(x)
    if torch.equal(whole, ones) and torch.equal(whole, two_threads):
        pytest.skip("this torch build's kernels happen not to depend on batch shape or thread count")
    assert (whole - ones).abs().max() < 1e-5


def test_a_batch_of_many_equals_many_batches_of_one(run_dir, reference, tmp_path):
    many = synthesise(run_dir, tmp_path / "many.h5", dataclasses.replace(CONFIG, batch_size=64))
    ones = synthesise(run_dir, tmp_path / "ones.h5", dataclasses.replace(CONFIG, batch_size=1))
    odd = synthesise(run_dir, tmp_path / "odd.h5", dataclasses.replace(CONFIG, batch_size=5))
    ref = read_all(reference)
    for path in (many, ones, odd):
        assert_same(read_all(path), ref)
    assert len(np.unique(ref["images"])) > 50  # far from trivial pixels: rounding can bite


def test_four_shards_joined_equal_one_shard(run_dir, reference, tmp_path):
    shards = [
        synthesise(run_dir, tmp_path / "shards" / f"synth-{i}-of-4.h5", CONFIG, shard=(i, 4))
        for i in range(4)
    ]
    sizes = [h5py.File(p, "r")["images"].shape[0] for p in shards]
    assert sizes == [7, 8, 7, 8]  # 30 images; shard edges not on micro-batch (8) edges
    master = gather(shards[::-1], tmp_path / "synth.h5")  # any order
    assert_same(read_all(master), read_all(reference))
    assert validate_file(master) == []
    with h5py.File(master, "r") as f:
        assert f["images"].is_virtual
        assert {m.file_name for m in f["images"].virtual_sources()} == {
            f"shards/synth-{i}-of-4.h5" for i in range(4)
        }


def test_the_thread_count_does_not_change_a_sample(run_dir, reference, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        three = synthesise(run_dir, tmp_path / "three.h5", CONFIG)
    finally:
        torch.set_num_threads(threads)
    assert_same(read_all(three), read_all(reference))
    # a process started with one OpenMP/MKL thread
    code = textwrap.dedent(f"""
        from infogan_cells.config import SynthConfig
        from infogan_cells.synthesis.synthesise import synthesise
        synthesise({str(run_dir)!r}, {str(tmp_path / "one.h5")!r}, SynthConfig(**{dataclasses.asdict(CONFIG)!r}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert_same(read_all(tmp_path / "one.h5"), read_all(reference))


def test_truncation_scales_z_and_nothing_else(run_dir, reference, tmp_path):
    half = read_all(synthesise(run_dir, tmp_path / "half.h5", dataclasses.replace(CONFIG, truncation=0.5)))
    ref = read_all(reference)
    np.testing.assert_array_equal(half["latent/z"], ref["latent/z"] * 0.5)
    for key in ("obs/category", "obs/seed", "latent/continuous", "latent/categorical"):
        np.testing.assert_array_equal(half[key], ref[key])
    assert not np.array_equal(half["images"], ref["images"])


def test_the_base_seed_shifts_the_samples(run_dir, reference, tmp_path):
    """Sample k uses seed config.seed + k: base seed 10 draws sample 0 as base seed 0 draws sample 10."""
    shifted = read_all(synthesise(run_dir, tmp_path / "s.h5", dataclasses.replace(CONFIG, seed=10)))
    ref = read_all(reference)
    np.testing.assert_array_equal(shifted["obs/seed"], np.arange(10, 40))
    np.testing.assert_array_equal(shifted["latent/z"][:20], ref["latent/z"][10:])
    np.testing.assert_array_equal(shifted["obs/category"], ref["obs/category"])  # from the index


# --------------------------------------------------------------------------------------
# What gets made


def test_uniform_proportions_are_balanced_in_every_prefix(reference):
    category = read_all(reference)["obs/category"]
    assert np.bincount(category, minlength=4).tolist() == [8, 7, 8, 7]
    for n in range(1, 31):
        assert np.abs(np.bincount(category[:n], minlength=4) - n / 4).max() <= 1.5


def test_prior_proportions_follow_the_learned_prior(run_dir, tmp_path):
    config = dataclasses.replace(CONFIG, n=200, proportions="prior")
    counts = np.bincount(
        read_all(synthesise(run_dir, tmp_path / "p.h5", config))["obs/category"], minlength=4
    )
    np.testing.assert_allclose(counts, np.array(PRIOR) * 200, atol=2)


def test_per_category_makes_n_of_each_interleaved(run_dir, tmp_path, category_map):
    path = synthesise(
        run_dir,
        tmp_path / "pc.h5",
        dataclasses.replace(CONFIG, n=5),
        per_category=True,
        category_map=category_map,
    )
    data = read_all(path)
    np.testing.assert_array_equal(data["obs/category"], np.arange(20) % 4)
    assert list(data["obs/label"][:4]) == ["uninfected", "ring", "ring", "schizont"]
    np.testing.assert_array_equal(data["latent/categorical"][:, 0], data["obs/category"])


def test_labels_select_categories_by_name(run_dir, tmp_path, category_map):
    config = dataclasses.replace(CONFIG, n=4, labels=["ring"])
    path = synthesise(run_dir, tmp_path / "ring.h5", config, per_category=True, category_map=category_map)
    data = read_all(path)
    np.testing.assert_array_equal(data["obs/category"], [1, 2] * 4)
    assert set(data["obs/label"]) == {"ring"}
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["categories"]) == [1, 2]
        cmap = json.loads(f.attrs["category_map"])
    assert cmap[3] == {"category": 3, "label": "schizont", "purity": None}


def test_labels_default_to_category_numbers_and_a_map_beside_the_network_is_found(run_dir, tmp_path):
    data = read_all(synthesise(run_dir, tmp_path / "a.h5", dataclasses.replace(CONFIG, n=4)))
    assert list(data["obs/label"]) == [f"category_{c:02d}" for c in data["obs/category"]]
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "category_map.csv").write_text(CATEGORY_MAP)
    data = read_all(synthesise(run, tmp_path / "b.h5", dataclasses.replace(CONFIG, n=4)))
    assert "schizont" in set(data["obs/label"])


def test_grid_codes_cover_the_grid_in_every_category(run_dir, tmp_path):
    config = dataclasses.replace(CONFIG, n=9, continuous="grid", grid_steps=3)
    data = read_all(synthesise(run_dir, tmp_path / "g.h5", config, per_category=True))
    grid = {(a, b) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)}
    for c in range(4):
        points = data["latent/continuous"][data["obs/category"] == c]
        assert {tuple(p) for p in points.tolist()} == grid


# --------------------------------------------------------------------------------------
# The file


def test_the_file_records_where_it_came_from(run_dir, reference):
    with h5py.File(reference, "r") as f:
        a = dict(f.attrs)
        assert f["images"].shape == (30, 16, 16, 3)
        assert f["images"].attrs["axes"] == "NYXC"
        assert list(f["images"].attrs["channel_names"]) == ["red", "green", "blue"]
        assert f["images"].chunks[1:] == (16, 16, 3)
        assert f["images"].compression == "gzip"
        assert f["latent/z"].shape == (30, 8) and f["latent/continuous"].shape == (30, 2)
    assert a["format"] == "infogan-cells/synthetic" and a["kind"] == "shard"
    assert a["model_sha256"] == file_sha256(run_dir)
    assert json.loads(a["config"]) == to_dict(CONFIG)
    assert a["package_version"] == __version__
    assert (a["shard_index"], a["shard_count"], a["start"], a["stop"], a["n_total"]) == (0, 1, 0, 30, 30)
    assert validate_file(reference) == []


def test_tiff_stacks_and_single_images_match_the_hdf5(run_dir, tmp_path, category_map):
    config = dataclasses.replace(CONFIG, tiff_per_image=True)
    path = synthesise(
        run_dir, tmp_path / "t.h5", config, tiff_dir=tmp_path / "tiff", category_map=category_map
    )
    data = read_all(path)
    names = {
        0: "category_00_uninfected",
        1: "category_01_ring",
        2: "category_02_ring",
        3: "category_03_schizont",
    }
    for c, name in names.items():
        rows = data["obs/category"] == c
        with tifffile.TiffFile(tmp_path / "tiff" / f"{name}.tif") as tif:
            assert tif.is_ome
            assert tif.series[0].axes == "TCYX"
            np.testing.assert_array_equal(tif.asarray(), np.moveaxis(data["images"][rows], -1, 1))
            ij = tif.pages[0].tags["IJMetadata"].value
            labels, info = ij["Labels"], json.loads(ij["Info"])
        seeds = data["obs/seed"][rows]
        assert labels[0] == f"{data['obs/label'][rows][0]} #{data['obs/index'][rows][0]} seed {seeds[0]} red"
        assert info["category"] == c and info["model_sha256"] == file_sha256(run_dir)
        table = pd.read_csv(tmp_path / "tiff" / f"{name}.csv")
        np.testing.assert_array_equal(table["seed"], seeds)
    for k in (0, 17, 29):
        image = tifffile.imread(image_tiff_path(tmp_path / "tiff", k, data["obs/label"][k]))
        np.testing.assert_array_equal(image, data["images"][k])


def test_gather_writes_the_stacks_of_the_whole_set(run_dir, reference, tmp_path):
    shards = [
        synthesise(run_dir, tmp_path / f"s{i}.h5", CONFIG, shard=(i, 3), tiff_dir=tmp_path / "parts")
        for i in range(3)
    ]
    assert (tmp_path / "parts" / "category_00.shard-001-of-003.tif").exists()
    gather(shards, tmp_path / "synth.h5", tiff_dir=tmp_path / "tiff")
    ref = read_all(reference)
    for c in range(4):
        stack = tifffile.imread(tmp_path / "tiff" / f"category_{c:02d}.tif")
        np.testing.assert_array_equal(stack, np.moveaxis(ref["images"][ref["obs/category"] == c], -1, 1))


def test_the_master_file_can_move_with_its_shards(run_dir, reference, tmp_path, monkeypatch):
    shards = [
        synthesise(run_dir, tmp_path / "a" / "shards" / f"{i}.h5", CONFIG, shard=(i, 2)) for i in range(2)
    ]
    gather(shards, tmp_path / "a" / "synth.h5")
    shutil.move(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(tmp_path)  # neither the old folder nor the file's own
    assert_same(read_all(tmp_path / "b" / "synth.h5"), read_all(reference))


def test_more_shards_than_samples_leaves_some_empty(run_dir, tmp_path):
    config = dataclasses.replace(CONFIG, n=3)
    shards = [synthesise(run_dir, tmp_path / f"{i}.h5", config, shard=(i, 5)) for i in range(5)]
    assert [validate_file(p) for p in shards] == [[]] * 5
    whole = read_all(synthesise(run_dir, tmp_path / "whole.h5", config))
    assert_same(read_all(gather(shards, tmp_path / "synth.h5")), whole)


def test_validate_names_each_problem(reference, tmp_path, capsys):
    broken = tmp_path / "broken.h5"
    shutil.copy(reference, broken)
    with h5py.File(broken, "r+") as f:
        del f["obs/seed"]
        f["images"].attrs["axes"] = "NCYX"
        f.attrs["format_version"] = 9
        f["obs/category"][0] = 7
    problems = validate_file(broken)
    assert any("format_version is 9" in p for p in problems)
    assert any("images.axes is 'NCYX'" in p for p in problems)
    assert any("'obs/seed' is missing" in p for p in problems)
    assert len(problems) == 3  # the changed category is not checked without obs/seed... but:
    with h5py.File(broken, "r+") as f:
        f["obs"].create_dataset("seed", data=np.arange(30))
    assert any("obs/category holds categories outside" in p for p in validate_file(broken))
    (tmp_path / "text.h5").write_text("hello")
    assert "not a readable HDF5 file" in validate_file(tmp_path / "text.h5")[0]
    assert main(["validate", str(reference)]) == 0
    with pytest.raises(SystemExit) as err:
        main(["validate", str(broken)])
    assert err.value.code == 1
    assert "obs/category holds categories outside" in capsys.readouterr().err


def test_validate_finds_a_master_without_its_shards(run_dir, tmp_path):
    shards = [synthesise(run_dir, tmp_path / "shards" / f"{i}.h5", CONFIG, shard=(i, 2)) for i in range(2)]
    gather(shards, tmp_path / "synth.h5")
    shutil.move(tmp_path / "synth.h5", tmp_path / "elsewhere.h5")
    (tmp_path / "shards" / "1.h5").unlink()
    problems = validate_file(tmp_path / "elsewhere.h5")
    assert problems == [
        f"Shard file(s) shards/1.h5 named by the master file are missing (looked in {tmp_path})."
    ]


def test_the_cli_synthesises_a_shard(run_dir, tmp_path):
    out = tmp_path / "cli.h5"
    assert (
        main(
            [
                "synthesise",
                "--run",
                str(run_dir),
                "--out",
                str(out),
                "--n",
                "12",
                "--shard",
                "1/2",
                "--set",
                "synthesis.micro_batch=8",
            ]
        )
        == 0
    )
    assert validate_file(out) == []
    assert main(["synthesise", "--run", str(run_dir), "--out", str(out), "--n", "12"]) == 2  # exists
