"""Filtered synthesis: ``synthesis.min_confidence`` keeps the samples Q assigns to their own category.

The run directory is built as in ``synth_runs.py`` (random weights), with Q's last layer
scaled up so that its probabilities spread: on it, category 2's samples nearly all reach 0.3,
category 1's about a third of the time, categories 0 and 3 never. The learned prior of the
network file leaves 0 and 3 out (``proportions: prior``), except where a test wants them.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from synth_runs import SPEC, assert_same, randomise, read_all

from infogan_cells.analysis.codes import assign_with_q
from infogan_cells.cli import main
from infogan_cells.config import SynthConfig, load_config
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.checkpoint import load_discriminator, load_generator, save_network
from infogan_cells.model.latent import sample_latent_by_seed, to_input
from infogan_cells.model.networks import Discriminator, Generator
from infogan_cells.synthesis.gather import gather
from infogan_cells.synthesis.generate import _passes, generate
from infogan_cells.synthesis.synthesise import synthesise
from infogan_cells.synthesis.validate import validate_file
from infogan_cells.synthesis.writers import DRAW_STRIDE

CONFIG = SynthConfig(n=40, batch_size=16, micro_batch=8, proportions="prior", min_confidence=0.3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    g = torch.Generator().manual_seed(0)
    G = Generator(SPEC, img_size=16, channels=3, width=8)
    D = Discriminator(SPEC, img_size=16, channels=3, width=8)
    randomise(G, g)
    randomise(D, g)
    with torch.no_grad():
        D.q_net[-1].weight.mul_(12.0)
    meta = {"channel_names": ["red", "green", "blue"], "category_prior": [0.0, 0.5, 0.5, 0.0], "img_size": 16}
    save_network(folder / "network-final.pt", G=G, D=D, G_ema=G, meta=meta)
    return folder


@pytest.fixture(scope="module")
def filtered(run_dir, tmp_path_factory):
    return synthesise(run_dir, tmp_path_factory.mktemp("filtered") / "synth.h5", CONFIG)


@pytest.fixture(scope="module")
def unfiltered(run_dir, tmp_path_factory):
    config = dataclasses.replace(CONFIG, min_confidence=0.0, score_confidence=True)
    return synthesise(run_dir, tmp_path_factory.mktemp("unfiltered") / "synth.h5", config)


def q_probability(run_dir, images: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Q's probability of each image's category, computed apart from synthesis (other batches)."""
    D, _, _ = load_discriminator(run_dir)
    _, probs = assign_with_q(D, images, batch_size=7)
    return probs[np.arange(len(images)), category]


def test_every_kept_sample_reaches_the_threshold(run_dir, filtered, unfiltered):
    data, plain = read_all(filtered), read_all(unfiltered)
    assert data["images"].shape == (40, 16, 16, 3)
    assert (data["obs/confidence"] >= CONFIG.min_confidence).all()
    assert (plain["obs/confidence"] < CONFIG.min_confidence).sum() >= 5  # the filter had work to do
    # the stored confidence is Q's probability of the stored pixels (up to float rounding)
    np.testing.assert_allclose(
        q_probability(run_dir, data["images"], data["obs/category"]), data["obs/confidence"], atol=1e-5
    )
    np.testing.assert_array_equal(data["obs/category"], plain["obs/category"])  # categories from the index
    assert validate_file(filtered) == []


def test_the_unfiltered_set_still_records_q_confidence(run_dir, unfiltered):
    data = read_all(unfiltered)
    assert data["obs/confidence"].dtype == np.float32
    np.testing.assert_array_equal(data["obs/seed"], np.arange(40))  # the first draw of every sample
    np.testing.assert_allclose(
        q_probability(run_dir, data["images"], data["obs/category"]), data["obs/confidence"], atol=1e-5
    )


def test_a_sample_whose_first_draw_passes_is_the_unfiltered_sample(filtered, unfiltered):
    data, plain = read_all(filtered), read_all(unfiltered)
    first = plain["obs/confidence"] >= CONFIG.min_confidence
    assert 0 < first.sum() < 40
    for key in ("images", "obs/seed", "obs/confidence", "latent/z", "latent/continuous"):
        np.testing.assert_array_equal(data[key][first], plain[key][first], err_msg=key)
    # the others took a later draw: seed + k + j * 2^32 with j >= 1
    draw, rest = np.divmod(data["obs/seed"] - CONFIG.seed - data["obs/index"], DRAW_STRIDE)
    assert (rest == 0).all() and (draw[first] == 0).all() and (draw[~first] >= 1).all()


def test_the_kept_seed_makes_the_sample_again(run_dir, filtered):
    """Identity: obs/seed and obs/category alone regenerate the stored pixels."""
    data = read_all(filtered)
    G, spec, _ = load_generator(run_dir)
    latent = sample_latent_by_seed(spec, data["obs/seed"])
    latent.cat[:, 0] = torch.from_numpy(data["obs/category"])
    np.testing.assert_array_equal(latent.z.numpy(), data["latent/z"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as synthesis runs each pass
    try:
        images = generate(
            G, to_input(spec, latent), data["obs/index"], CONFIG.micro_batch, torch.device("cpu")
        )
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(images, data["images"])


def test_shards_and_batch_sizes_keep_the_same_samples(run_dir, filtered, tmp_path):
    shards = [
        synthesise(
            run_dir, tmp_path / "shards" / f"{i}.h5", dataclasses.replace(CONFIG, batch_size=5), shard=(i, 3)
        )
        for i in range(3)
    ]
    master = gather(shards, tmp_path / "synth.h5")
    assert validate_file(master) == []
    assert_same(read_all(master), read_all(filtered))
    ones = synthesise(run_dir, tmp_path / "ones.h5", dataclasses.replace(CONFIG, batch_size=1))
    assert_same(read_all(ones), read_all(filtered))


def test_redraws_share_passes_where_their_rows_do_not_collide():
    """Samples 3, 9, 17, 18 sit in rows 3, 1, 1, 2 of 8: two passes instead of three micro-batches."""
    index = np.array([3, 9, 17, 18])
    assert [p.tolist() for p in _passes(index, 8)] == [[0], [1], [2, 3]]
    assert [p.tolist() for p in _passes(index, 8, pack=True)] == [[0, 1, 3], [2]]
    assert [p.tolist() for p in _passes(np.arange(16), 8, pack=True)] == [list(range(8)), list(range(8, 16))]


def test_tiff_stacks_name_the_kept_seeds(run_dir, filtered, tmp_path):
    path = synthesise(run_dir, tmp_path / "t.h5", CONFIG, tiff_dir=tmp_path / "tiff", shard=(1, 2))
    data = read_all(path)
    assert_same(data, {k: v[20:] for k, v in read_all(filtered).items()})
    for c in (1, 2):
        rows = data["obs/category"] == c
        name = f"category_{c:02d}.shard-001-of-002"
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "tiff" / f"{name}.tif"), np.moveaxis(data["images"][rows], -1, 1)
        )
        table = pd.read_csv(tmp_path / "tiff" / f"{name}.csv")
        np.testing.assert_array_equal(table["seed"], data["obs/seed"][rows])
    assert sorted(p.name for p in (tmp_path / "tiff").iterdir()) == [
        "category_01.shard-001-of-002.csv",
        "category_01.shard-001-of-002.tif",
        "category_02.shard-001-of-002.csv",
        "category_02.shard-001-of-002.tif",
    ]


def test_validate_finds_a_sample_below_the_threshold(filtered, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(filtered.read_bytes())
    with h5py.File(broken, "r+") as f:
        f["obs/confidence"][3] = 0.1
        f["obs/seed"][5] += 1
    problems = validate_file(broken)
    assert any("obs/confidence holds values outside [0.3, 1]" in p for p in problems)
    assert any("obs/seed is not config.seed + obs/index + j * 2^32" in p for p in problems)


# --------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_min_confidence_outside_zero_to_one_is_refused(run_dir, tmp_path, value):
    with pytest.raises(ConfigError, match=r"synthesis\.min_confidence"):
        load_config(overrides=[{"synthesis": {"min_confidence": value}}])
    with pytest.raises(ConfigError, match=r"synthesis\.min_confidence"):
        synthesise(run_dir, tmp_path / "out.h5", dataclasses.replace(CONFIG, min_confidence=value))
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_min_confidence_one_in_one_line(run_dir, tmp_path, capsys):
    code = main(
        [
            "synthesise",
            "--run",
            str(run_dir),
            "--out",
            str(tmp_path / "out.h5"),
            "--n",
            "4",
            "--set",
            "synthesis.min_confidence=1",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "synthesis.min_confidence" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_a_threshold_no_draw_reaches_stops_with_the_best_seen_and_writes_nothing(run_dir, tmp_path):
    # category 2's samples reach about 0.89 at best, category 1's 0.64: no sample reaches 0.95
    config = dataclasses.replace(CONFIG, min_confidence=0.95, tiff_per_image=True)
    with pytest.raises(
        InputError,
        match=r"synthesis\.min_confidence 0\.95: sample \d+ .* in 100 draws "
        r"\(best 0\.[0-8]\d\d",
    ):
        synthesise(run_dir, tmp_path / "synth.h5", config, tiff_dir=tmp_path / "tiff")
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "tiff"])
    assert not (tmp_path / "tiff").exists() or list((tmp_path / "tiff").rglob("*")) == []


def test_categories_q_never_gives_the_threshold_stop_the_job(run_dir, tmp_path):
    """With a uniform mix, categories 0 and 3 (Q's probability below 0.15 for every draw) are made too."""
    with pytest.raises(InputError, match=r"category [03], 'category_0[03]'\).*best 0\.[01]"):
        synthesise(run_dir, tmp_path / "synth.h5", dataclasses.replace(CONFIG, proportions="uniform"))
    assert list(tmp_path.iterdir()) == []


def test_without_a_threshold_q_scores_only_on_request(run_dir, unfiltered, tmp_path):
    """The default (min_confidence 0, score_confidence off) runs no discriminator: obs/confidence
    is NaN, every other dataset equals the scored set's, and the file validates."""
    config = dataclasses.replace(CONFIG, min_confidence=0.0)
    plain = read_all(synthesise(run_dir, tmp_path / "synth.h5", config))
    scored = read_all(unfiltered)
    assert np.isnan(plain["obs/confidence"]).all()
    for key in ("images", "obs/seed", "obs/category", "latent/z", "latent/continuous"):
        np.testing.assert_array_equal(plain[key], scored[key], err_msg=key)
    assert validate_file(tmp_path / "synth.h5") == []
