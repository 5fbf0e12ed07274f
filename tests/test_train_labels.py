"""Training with imbalance and labels: the learned prior, semi-supervision from a few labelled
crops, hold-out crops, and partial labels (some crops labelled, the rest not) supervising Q with
no setting."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from tiny_train import make_store, tiny_config

from infogan_cells.config import LatentSpec
from infogan_cells.data.store import write_crop_store
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.checkpoint import load_generator
from infogan_cells.training.averaging import effective_prior
from infogan_cells.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("crops") / "crops.h5")


# --------------------------------------------------------------------------------------
# Imbalance: learned prior, semi-supervision, over-clustering


def test_learned_prior_is_floored_and_stored(store, tmp_path):
    config = tiny_config(
        latent=LatentSpec(z_dim=4, categorical=[6], n_continuous=0),
        prior="learned",
        prior_floor=0.05,
        prior_warmup=0.0,
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    _, _, meta = load_generator(run)
    (prior,) = meta["category_prior"]
    assert len(prior) == 6 and sum(prior) == pytest.approx(1.0)
    assert min(prior) >= 0.05 - 1e-7
    assert "category_prior" in json.loads((run / "stats.jsonl").read_text().splitlines()[-1])


def test_effective_prior_mixes_in_the_floor():
    (p,) = effective_prior([torch.tensor([1.0, 0.0, 0.0, 0.0])], 0.1)
    assert torch.allclose(p, torch.tensor([0.7, 0.1, 0.1, 0.1]))


def test_semi_supervised_names_categories_by_sorted_label(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    config = tiny_config(
        latent=LatentSpec(z_dim=4, categorical=[3], n_continuous=1), supervised_fraction=0.5, total_images=16
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    _, _, meta = load_generator(run)
    assert meta["category_labels"] == ["apple", "zebra"]
    assert "Loss/Q/sup" in json.loads((run / "stats.jsonl").read_text().splitlines()[-1])


def test_semi_supervision_teaches_q_the_labels_from_a_few_crops(tmp_path):
    """4 labelled disks and 4 labelled squares (a class-balanced batch of 32 drawn from them every step:
    with 8, most seeds never separate them) are enough
    for Q to sort all 48 crops by shape."""
    from infogan_cells.analysis.codes import assign_with_q
    from infogan_cells.data.store import read_crop_store
    from infogan_cells.model.checkpoint import load_discriminator

    store = make_store(tmp_path / "crops.h5", n=48, labels=("disk", "square"))
    config = tiny_config(
        supervised_fraction=0.25,
        supervised_batch=32,
        lambda_sup=10.0,
        total_images=4800,
        batch_size=16,
        tick_images=2400,
        snapshot_images=4800,
        checkpoint_images=4800,
        d_channels=8,
        lr_d=1e-3,
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    D, _, meta = load_discriminator(run / "network-final.pt")
    cs = read_crop_store(store)
    pred, _ = assign_with_q(D, cs.images)
    names = np.array(meta["category_labels"])[pred]
    labelled = cs.labels != ""
    assert (names[labelled] == cs.labels[labelled]).mean() >= 0.9


def test_holdout_crops_are_kept_out_of_training_and_recorded(store, tmp_path):
    from infogan_cells.data.store import holdout_split

    run = train(store, tmp_path / "run", tiny_config(holdout_fraction=0.25), seed=0, device="cpu")
    _, _, meta = load_generator(run)
    hold, _ = holdout_split(24, 0.25)
    assert meta["holdout"] == hold.tolist() and len(hold) == 6
    assert meta["n_crops"] == 18
    _, _, plain = load_generator(train(store, tmp_path / "all", tiny_config(), seed=0, device="cpu"))
    assert plain["holdout"] == [] and plain["n_crops"] == 24


def test_semi_supervised_needs_a_category_per_label(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=("a", "b"))
    config = tiny_config(latent=LatentSpec(z_dim=4, categorical=[3], n_continuous=1), supervised_fraction=0.5)
    store3 = tmp_path / "three.h5"
    with h5py.File(store, "r") as f:  # relabel into 4 classes
        n = len(f["images"])
    make_store(store3, n=n, labels=("a", "b"))
    from infogan_cells.data.store import read_crop_store

    cs = read_crop_store(store3)
    cs.obs["label"] = ["a", "b", "c", "d"] * (n // 4)
    write_crop_store(store3, cs.images, cs.obs, cs.channel_names, csv=False)
    with pytest.raises(ConfigError, match="3 categories but the crops have 4 labels"):
        train(store3, tmp_path / "run", config, seed=0, device="cpu")


def test_semi_supervised_needs_labels(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=())
    with pytest.raises(InputError, match="no crop has a label"):
        train(store, tmp_path / "run", tiny_config(supervised_fraction=0.5), seed=0, device="cpu")


# --------------------------------------------------------------------------------------
# Partial labels: a few labelled crops among unlabelled ones supervise Q with no setting


def test_partial_labels_supervise_q_without_any_setting(tmp_path):
    """2 labelled crops in 3 (the rest unlabelled): the default config trains semi-supervised and
    names the categories from the labels; with partial_labels off, or a fully labelled store, not."""
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    config = tiny_config(
        latent=LatentSpec(z_dim=4, categorical=[3], n_continuous=1), total_images=16, partial_labels=True
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    _, _, meta = load_generator(run)
    assert meta["category_labels"] == ["apple", "zebra"]
    assert "Loss/Q/sup" in json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    off = train(
        store, tmp_path / "off", tiny_config(latent=config.latent, total_images=16), seed=0, device="cpu"
    )
    assert load_generator(off)[2]["category_labels"] == []
    full = make_store(tmp_path / "full.h5", labels=("zebra", "apple"))
    with h5py.File(full, "r+") as f:  # label every crop
        del f["obs/label"]
        f["obs"].create_dataset(
            "label", data=np.array(["zebra", "apple"] * 12, dtype=object), dtype=h5py.string_dtype("utf-8")
        )
    run_full = train(full, tmp_path / "full", config, seed=0, device="cpu")
    assert load_generator(run_full)[2]["category_labels"] == []


def test_partial_labels_with_more_classes_than_categories_name_the_keys(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    config = tiny_config(latent=LatentSpec(z_dim=4, categorical=[1], n_continuous=1), partial_labels=True)
    with pytest.raises(ConfigError, match=r"train\.latent\.categorical.*train\.partial_labels"):
        train(store, tmp_path / "run", config, seed=0, device="cpu")


def test_mode_seeking_of_a_labelled_run_applies_where_labels_supervise_q(tmp_path):
    """lambda_mode_seeking_labelled stands in for lambda_mode_seeking (0) only where labelled crops
    supervise Q: the NIH preset's varied samples with a few labels, its clustering without."""
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    latent = LatentSpec(z_dim=4, categorical=[3], n_continuous=1)

    def last_record(name, **kw):
        config = tiny_config(latent=latent, total_images=16, lambda_mode_seeking_labelled=0.2, **kw)
        run = train(store, tmp_path / name, config, seed=0, device="cpu")
        return json.loads((run / "stats.jsonl").read_text().splitlines()[-1])

    assert last_record("labelled", partial_labels=True)["Loss/G/mode_seeking"] > 0
    assert "Loss/G/mode_seeking" not in last_record("unlabelled", partial_labels=False)
