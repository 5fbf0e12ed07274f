"""Readers: SyntheticCells and CropDataset (torch Datasets, safe with DataLoader workers) and read_obs."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import infogan_cells
from infogan_cells.config import LatentSpec, SynthConfig
from infogan_cells.data.store import write_crop_store
from infogan_cells.errors import InputError
from infogan_cells.model.checkpoint import save_network
from infogan_cells.model.networks import Discriminator, Generator
from infogan_cells.synthesis.dataset import CropDataset, SyntheticCells, read_obs
from infogan_cells.synthesis.gather import gather
from infogan_cells.synthesis.synthesise import synthesise

SPEC = LatentSpec(z_dim=4, categorical=[3], n_continuous=1)
CONFIG = SynthConfig(n=24, batch_size=8, micro_batch=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A shard pair, their master file and the same set in one file."""
    folder = tmp_path_factory.mktemp("synth")
    g = torch.Generator().manual_seed(0)
    G, D = (
        Generator(SPEC, img_size=8, channels=2, width=4),
        Discriminator(SPEC, img_size=8, channels=2, width=4),
    )
    with torch.no_grad():
        for p in [*G.parameters(), *D.parameters()]:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    save_network(folder / "run" / "network-final.pt", G=G, D=D, meta={"channel_names": ["dna", "actin"]})
    shards = [synthesise(folder / "run", folder / f"shard{i}.h5", CONFIG, shard=(i, 2)) for i in range(2)]
    return {
        "shard": shards[1],
        "master": gather(shards, folder / "synth.h5"),
        "whole": synthesise(folder / "run", folder / "whole.h5", CONFIG),
    }


@pytest.mark.parametrize("which", ["shard", "master"])
def test_items_are_float_images_and_category_labels(files, which):
    ds = SyntheticCells(files[which])
    with h5py.File(files[which], "r") as f:
        images, category = f["images"][:], f["obs/category"][:]
    assert len(ds) == len(category) == (12 if which == "shard" else 24)
    image, label = ds[5]
    assert image.shape == (2, 8, 8) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    np.testing.assert_array_equal(
        (image * 255).round().numpy().astype(np.uint8), images[5].transpose(2, 0, 1)
    )
    assert isinstance(label, int) and label == category[5]
    assert ds[-1][1] == category[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.channel_names == ["dna", "actin"] and ds.category_names[label] == f"category_{label:02d}"
    ds.close()


def test_transform_is_applied(files):
    ds = SyntheticCells(files["whole"], transform=lambda x: x[:1] * 2)
    image, _ = ds[0]
    assert image.shape == (1, 8, 8)
    np.testing.assert_allclose(image.numpy(), SyntheticCells(files["whole"])[0][0][:1].numpy() * 2)


def test_a_dataloader_with_two_workers_returns_the_right_labels(files):
    ds = SyntheticCells(files["master"])
    ds[0]  # the parent holds an open handle now: the workers must not use it
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    images, labels = zip(*loader, strict=True)
    with h5py.File(files["master"], "r") as f:
        expected_images, expected = f["images"][:], f["obs/category"][:]
    np.testing.assert_array_equal(torch.cat(labels).numpy(), expected)
    got = (torch.cat(images) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected_images)


def test_pickling_drops_the_file_handle(files):
    ds = SyntheticCells(files["whole"])
    ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._file is None
    assert copy[3][1] == ds[3][1]


def test_read_obs_is_the_label_table(files):
    obs = read_obs(files["master"])
    assert list(obs.columns) == ["index", "seed", "category", "label", "confidence"]
    assert obs["confidence"].isna().all()  # not scored: neither min_confidence nor score_confidence is set
    np.testing.assert_array_equal(obs["index"], np.arange(24))
    assert obs["label"].tolist() == [f"category_{c:02d}" for c in obs["category"]]
    pd.testing.assert_frame_equal(obs, read_obs(files["whole"]))
    assert infogan_cells.read_obs is read_obs and infogan_cells.SyntheticCells is SyntheticCells


def test_files_that_are_not_synthetic_data_sets_are_refused(tmp_path):
    with pytest.raises(InputError, match="synthetic data set not found"):
        SyntheticCells(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_obs(tmp_path / "text.h5")
    with h5py.File(tmp_path / "crops.h5", "w") as f:
        f.attrs["format"] = "infogan-cells/crops"
    with pytest.raises(InputError, match="not a synthetic data set"):
        SyntheticCells(tmp_path / "crops.h5")


@pytest.mark.parametrize("which", ["shard", "master"])
def test_the_synthetic_obs_group_is_an_anndata_dataframe(files, which):
    anndata = pytest.importorskip("anndata", reason="anndata is the 'anndata' extra (in 'dev')")
    with h5py.File(files[which], "r") as f:
        got = anndata.io.read_elem(f["obs"])
    obs = read_obs(files[which])
    assert list(got.columns) == ["seed", "category", "label", "confidence"] and got.index.name == "index"
    np.testing.assert_array_equal(got.index.to_numpy(), obs["index"])
    np.testing.assert_array_equal(got["category"], obs["category"])
    np.testing.assert_array_equal(got["label"].astype(str), obs["label"])


# --------------------------------------------------------------------------------------
# CropDataset


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """Six 8x8 RGB crops; one failed QC; labels ring/rbc/unknown."""
    path = tmp_path_factory.mktemp("crops") / "crops.h5"
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    n = len(images)
    obs = pd.DataFrame(
        {
            "source_image": ["a.png"] * n,
            "source_index": np.arange(n),
            "min_row": np.zeros(n, int),
            "min_col": np.zeros(n, int),
            "max_row": np.full(n, 8),
            "max_col": np.full(n, 8),
            "label": ["ring", "rbc", "", "ring", "rbc", "ring"],
            "qc_pass": [True, True, True, False, True, True],
            "qc_reason": ["", "", "", "blur", "", ""],
        }
    )
    write_crop_store(path, images, obs, ["r", "g", "b"], csv=False)
    return path


def test_crop_items_are_float_images_and_label_targets(crops):
    ds = CropDataset(crops)
    with h5py.File(crops, "r") as f:
        images = f["images"][:]
    assert len(ds) == 5  # the crop that failed QC is not an item
    np.testing.assert_array_equal(ds.crop_index, [0, 1, 2, 4, 5])
    assert (
        ds.classes == ["rbc", "ring"] and ds.channel_names == ["r", "g", "b"] and ds.image_shape == (8, 8, 3)
    )
    assert [ds[i][1] for i in range(len(ds))] == [1, 0, -1, 0, 1]  # -1: label unknown
    image, _ = ds[3]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    np.testing.assert_array_equal(
        (image * 255).round().numpy().astype(np.uint8), images[4].transpose(2, 0, 1)
    )
    assert ds[-1][1] == ds[4][1]
    with pytest.raises(IndexError):
        ds[5]
    assert len(CropDataset(crops, passed_qc_only=False)) == 6
    assert infogan_cells.CropDataset is CropDataset
    ds.close()


def test_crop_transforms_and_categories_as_targets(crops):
    categories = pd.Series([2, 0, 1], index=pd.Index([5, 0, 2], name="crop_index"), name="category")
    ds = CropDataset(
        crops, target=categories, transform=lambda x: x[:1], target_transform=lambda t: f"cat{t}"
    )
    assert len(ds) == 3
    image, target = ds[0]
    assert image.shape == (1, 8, 8) and target == "cat2"
    np.testing.assert_array_equal(image.numpy(), CropDataset(crops, passed_qc_only=False)[5][0][:1].numpy())
    assert ds.obs["source_index"].tolist() == [5, 0, 2]
    src = CropDataset(crops, target="source_image")
    assert src.classes == ["a.png"] and {src[i][1] for i in range(len(src))} == {0}
    assert [t for _, t in CropDataset(crops, target="source_index")] == [0, 1, 2, 4, 5]
    named = CropDataset(crops, target=pd.Series(["ring", "", "rbc"], index=[1, 2, 3]))
    assert named.classes == ["rbc", "ring"] and [t for _, t in named] == [1, -1, 0]


def test_crop_dataset_in_a_dataloader_with_two_workers(crops):
    ds = CropDataset(crops)
    ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._file is None and copy[2][1] == ds[2][1]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    images, targets = zip(*loader, strict=True)
    with h5py.File(crops, "r") as f:
        expected = f["images"][:][ds.crop_index]
    np.testing.assert_array_equal(torch.cat(targets).numpy(), ds.targets)
    np.testing.assert_array_equal(
        (torch.cat(images) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), expected
    )


def test_bad_crop_dataset_inputs_are_refused(crops, files):
    with pytest.raises(InputError, match="crop store not found"):
        CropDataset(crops.parent / "missing.h5")
    with pytest.raises(InputError, match="not a crop store"):
        CropDataset(files["whole"])
    with pytest.raises(InputError, match="no obs column 'stage'"):
        CropDataset(crops, target="stage")
    with pytest.raises(InputError, match="crop indices 0..5"):
        CropDataset(crops, target=pd.Series([1], index=[6]))
