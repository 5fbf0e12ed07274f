"""Every stage on a real data set: crops from the imaging-flow-cytometry cells, a short CPU
training run, the analysis (its label measures recomputed here independently), and a synthetic
data set in 4 shards joined by a master file, read back by h5py, tifffile and a DataLoader."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from infogan_cells import SyntheticCells, read_obs
from infogan_cells.analysis.analyse import analyse
from infogan_cells.analysis.quality import cnn_accuracy
from infogan_cells.config import load_config
from infogan_cells.data.store import holdout_split, read_crop_store
from infogan_cells.preprocess.crop import crop
from infogan_cells.synthesis.gather import gather
from infogan_cells.synthesis.synthesise import synthesise
from infogan_cells.synthesis.validate import validate_file
from infogan_cells.training.loop import train

pytestmark = pytest.mark.shared_data

TINY = {
    "device": "cpu",
    "crop": {"size": 32},
    "train": {
        "latent": {"z_dim": 16, "categorical": [7], "n_continuous": 2},
        "total_images": 1024,
        "batch_size": 64,
        "g_channels": 16,
        "d_channels": 16,
        "tick_images": 512,
        "snapshot_images": 1024,
        "checkpoint_images": 1024,
    },
    "analyse": {
        "traversal_steps": 3,
        "traversal_samples": 4,
        "n_synthetic": 128,
        "encoder_epochs": 1,
        "nearest": 4,
        "classifier_steps": 30,
    },
    "synthesis": {"n": 70, "shards": 4, "batch_size": 16},
}


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ifc")
    cfg = load_config(
        overrides=[TINY, {"input": {"path": str(shared_data / "jurkat_ifc_cellcycle" / "cells.npz")}}]
    )
    crop(cfg.input.path, root / "crops.h5", cfg.input, cfg.crop)
    train(root / "crops.h5", root / "run", cfg.train, seed=0, device="cpu", resolved_config=cfg)
    return root, cfg


def test_analysis_on_a_trained_run_matches_an_independent_computation(trained):
    root, cfg = trained
    metrics = analyse(root / "run", root / "crops.h5", root / "analysis", cfg.analyse, device="cpu")
    assignments = pd.read_csv(root / "analysis" / "assignments.csv", keep_default_na=False)
    store = read_crop_store(root / "crops.h5")
    assert (assignments["label"].to_numpy() == store.labels[assignments["crop_index"]]).all()
    labelled = assignments[assignments["label"] != ""]
    assert len(labelled) == metrics["n_labelled"] > 1500
    nmi = normalized_mutual_info_score(labelled["label"], labelled["category"])
    ari = adjusted_rand_score(labelled["label"], labelled["category"])
    assert metrics["nmi"] == pytest.approx(nmi, abs=1e-9)
    assert metrics["ari"] == pytest.approx(ari, abs=1e-9)
    # category_map: the majority label of each category, with its purity, from the assignments
    cmap = pd.read_csv(root / "analysis" / "category_map.csv", keep_default_na=False).set_index("category")
    for k, group in labelled.groupby("category"):
        counts = group["label"].value_counts()
        assert float(cmap.loc[k, "purity"]) == pytest.approx(counts.iloc[0] / len(group))
        assert counts[cmap.loc[k, "label"]] == counts.iloc[0]
    saved = json.loads((root / "analysis" / "metrics.json").read_text())
    assert set(saved["baselines"]) == {"kmeans_pixels", "kmeans_morphology", "best_feature"}
    # the k-means baseline on pixels, recomputed here from the store (same k, seed and restarts)
    keep = store.obs["qc_pass"].to_numpy(dtype=bool)
    pixels = store.images[keep].reshape(int(keep.sum()), -1).astype(np.float32) / 255
    clusters = KMeans(7, n_init=3, random_state=0).fit_predict(pixels)
    known = store.labels[keep] != ""
    assert saved["baselines"]["kmeans_pixels"]["nmi"] == pytest.approx(
        normalized_mutual_info_score(store.labels[keep][known], clusters[known]), abs=1e-9
    )
    # the code-meaning table: each code's named feature is its strongest |rho| in codes.csv
    codes = pd.read_csv(root / "analysis" / "codes.csv")
    assert set(saved["codes"]) == {"c0", "c1"}
    for code, rows in codes.groupby("code"):
        best = rows.loc[rows["rho"].abs().idxmax()]
        assert saved["codes"][code]["feature"] == best["feature"]
        assert saved["codes"][code]["rho"] == pytest.approx(best["rho"])
        assert rows["rho"].between(-1, 1).all()
    # quality: the train-on-real line recomputed with the same classifiers (one per seed) on the
    # analysis's split; the figure is their mean
    quality = saved["quality"]
    assert quality["fd_morphology"] >= 0 and quality["holdout_seen_in_training"] is True
    hold, rest = holdout_split(int(keep.sum()), cfg.analyse.holdout_fraction)
    images, labels = store.images[keep], store.labels[keep]
    for balanced, key in ((False, "trtr_accuracy"), (True, "trtr_balanced_accuracy")):
        trtr = [
            cnn_accuracy(
                images[rest],
                labels[rest],
                images[hold],
                labels[hold],
                balanced=balanced,
                steps=cfg.analyse.classifier_steps,
                seed=s,
            )
            for s in range(cfg.analyse.classifier_seeds)
        ]
        assert quality["classifier"]["cnn"][f"{key}_seeds"] == pytest.approx(trtr)
        assert quality[key] == pytest.approx(np.mean(trtr))
    assert quality["n_holdout"] == len(hold)
    if cmap["label"][cmap["label"].isin(set(labels))].nunique() < 2:  # < 2 classes to train on
        assert quality["tstr_accuracy"] is None
    else:
        assert 0 <= quality["tstr_accuracy"] <= 1
    assert (root / "analysis" / "report" / "index.html").exists()
    assert (root / "analysis" / "report" / "explorer.html").exists()


def test_four_shards_master_tiff_and_dataloader(trained, tmp_path):
    root, cfg = trained
    shards = [
        synthesise(root / "run", tmp_path / f"synth-{i}-of-4.h5", cfg.synthesis, shard=(i, 4), device="cpu")
        for i in range(4)
    ]
    master = tmp_path / "synth.h5"
    gather(shards, master, tiff_dir=tmp_path / "tiff")
    for path in [*shards, master]:
        assert validate_file(path) == [], path
    with h5py.File(master, "r") as f:
        assert f["images"].is_virtual and f["images"].shape == (70, 32, 32, 3)
        whole = f["images"][...]
    parts = [h5py.File(p, "r")["images"][...] for p in shards]
    assert np.array_equal(whole, np.concatenate(parts))

    obs = read_obs(master)
    assert len(obs) == 70 and obs["seed"].is_unique
    stacks = sorted((tmp_path / "tiff").glob("*.tif"))
    assert len(stacks) == obs["category"].nunique()
    n_pages = 0
    for path in stacks:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            assert tif.imagej_metadata is not None or tif.ome_metadata is not None
        n_pages += data.size // (32 * 32 * 3)
    assert n_pages == 70

    loader = torch.utils.data.DataLoader(SyntheticCells(master), batch_size=16, num_workers=2)
    labels = torch.cat([y for _, y in loader]).numpy()
    assert np.array_equal(labels, obs["category"].to_numpy())
