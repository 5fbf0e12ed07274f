"""Crop counts on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.readers import list_source_images
from infogan_cells.data.store import read_crop_store
from infogan_cells.preprocess.crop import crop


def _categories(json_path: Path, names: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for entry in json.loads(json_path.read_text()):
        name = entry["image"]["pathname"].lstrip("/")
        if names is None or name in names:
            rows += [(name, j, obj["category"]) for j, obj in enumerate(entry["objects"])]
    return pd.DataFrame(rows, columns=["source_image", "source_index", "category"])


@pytest.mark.shared_data
def test_bbbc041_one_crop_per_box(shared_data, tmp_path):
    path = shared_data / "bbbc041" / "training_subset.json"

    summary = crop(path, tmp_path / "c.h5", InputConfig(), CropConfig(), montage_dir=tmp_path / "m")

    obs = read_crop_store(tmp_path / "c.h5").obs
    assert summary["n_boxes"] == 560 and summary["skipped"] == {}
    assert summary["n_crops"] == 560 - sum(summary["skipped"].values()) - summary["n_qc_dropped"] == len(obs)
    assert summary["n_qc_dropped"] <= 3  # nearly every box passes
    truth = _categories(path).merge(obs, on=["source_image", "source_index"], validate="1:1")
    assert len(truth) == len(obs) and (truth["category"] == truth["label"]).all()
    assert (tmp_path / "m" / "c_montage_trophozoite.png").exists()


@pytest.mark.shared_data
def test_iml_edge_boxes_are_clipped_and_flagged(shared_data, tmp_path):
    path = shared_data / "iml_malaria" / "annotations_bbbc041_format.json"
    names = list_source_images(path)[:6]

    summary = crop(path, tmp_path / "c.h5", InputConfig(), CropConfig(), images=names)

    obs = read_crop_store(tmp_path / "c.h5").obs
    truth = _categories(path, names)
    assert summary["n_boxes"] == len(truth)
    assert summary["n_crops"] == len(truth) - sum(summary["skipped"].values()) - summary["n_qc_dropped"]
    assert summary["n_crops"] >= 0.97 * len(truth)
    assert summary["n_clipped"] == obs["qc_clipped"].sum() > 0
    clipped = obs[obs["qc_clipped"]]
    assert clipped["qc_pass"].all() and (clipped["qc_inside"] > 0.9).all()
    assert (
        (clipped["min_row"] < 0)
        | (clipped["min_col"] < 0)
        | (clipped["max_row"] > 960)
        | (clipped["max_col"] > 1280)
    ).all()
    labelled = truth.merge(obs, on=["source_image", "source_index"])
    assert (labelled["category"] == labelled["label"]).all()


@pytest.mark.shared_data
def test_nih_class_folders(shared_data, tmp_path):
    summary = crop(shared_data / "nih_malaria_cell_images", tmp_path / "c.h5", InputConfig(), CropConfig())

    stored = read_crop_store(tmp_path / "c.h5")
    assert summary["n_crops"] == 400 and stored.images.shape == (400, 64, 64, 3)
    assert stored.obs["label"].value_counts().to_dict() == {"Parasitized": 200, "Uninfected": 200}


@pytest.mark.shared_data
def test_jurkat_ifc_npz(shared_data, tmp_path):
    path = shared_data / "jurkat_ifc_cellcycle" / "cells.npz"

    summary = crop(path, tmp_path / "c.h5", InputConfig(), dataclasses.replace(CropConfig(), size=32))

    stored = read_crop_store(tmp_path / "c.h5")
    assert summary["n_crops"] == 1709 and stored.images.shape == (1709, 32, 32, 3)
    assert stored.channel_names == ["Ch3_brightfield", "Ch4_DNA_stain", "Ch6_darkfield"]
    with np.load(path) as npz:
        names = npz["class_names"][npz["labels"]]
    assert stored.obs["label"].tolist() == names.tolist()
    assert stored.obs["source_index"].tolist() == list(range(1709))
    # 16-bit normalised per channel over the whole stack: every channel uses the full range
    assert [int(stored.images[..., k].max()) for k in range(3)] == [255, 255, 255]
