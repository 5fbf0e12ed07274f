"""`infogan-cells train` and `infogan-cells analyse` on a crop store made from each shared data
set, on the CPU: the crop, train and analyse commands as a user runs them, the run directory
they leave, and the analysis's label measures recomputed here from its assignments."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from infogan_cells.data.store import read_crop_store
from infogan_cells.model.checkpoint import load_discriminator, load_generator

pytestmark = pytest.mark.shared_data

# (folder, the crop command's input inside it, extra crop arguments)
SETS = {
    "bbbc041": (
        "bbbc041/training_subset.json",
        ["--images", "images/00c8364b-8c85-4502-bcfe-64736fe76815.png"],
    ),
    "iml_malaria": ("iml_malaria/annotations_bbbc041_format.json", ["--images", "images/PA171695.JPG"]),
    "nih": ("nih_malaria_cell_images", []),
    "jurkat": ("jurkat_ifc_cellcycle/cells.npz", []),
}
ANALYSE = [
    "--set",
    "analyse.traversal_steps=3",
    "--set",
    "analyse.traversal_samples=4",
    "--set",
    "analyse.n_synthetic=64",
    "--set",
    "analyse.encoder_epochs=1",
    "--set",
    "analyse.nearest=4",
    "--set",
    "analyse.classifier_steps=10",
]
TRAIN = [
    "--set",
    "train.total_images=2048",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.g_channels=8",
    "--set",
    "train.d_channels=8",
    "--set",
    "train.tick_images=512",
    "--set",
    "train.snapshot_images=1024",
    "--set",
    "train.checkpoint_images=1024",
    "--set",
    "train.latent.categorical=[4]",
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infogan_cells", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("name", sorted(SETS))
def test_train_command_on_each_shared_data_set(name, shared_data, tmp_path):
    source, extra = SETS[name]
    crops = tmp_path / "crops.h5"
    done = _cli("crop", "--input", str(shared_data / source), "--size", "32", "--out", str(crops), *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    cs = read_crop_store(crops)
    assert len(cs) >= 20
    run = tmp_path / "run"
    done = _cli(
        "train",
        "--crops",
        str(crops),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        "--seed",
        "0",
        *TRAIN,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in records] == [512, 1024, 1536, 2048]
    assert all(r["images_per_s"] > 0 for r in records)
    assert "train:" in (run / "config.yaml").read_text()
    assert sorted(p.name for p in run.glob("samples-*.png")) == ["samples-000001.png", "samples-000002.png"]
    with Image.open(run / "samples.gif") as gif:
        assert gif.n_frames == 2  # one sheet per 1,024 images
    with Image.open(run / "loss.png") as png:
        assert png.format == "PNG"
    assert not (run / "resume.pt").exists()  # superseded by the final network
    G, spec, meta = load_generator(run)
    assert meta["images_seen"] == 2048 and meta["channel_names"] == cs.channel_names
    assert spec.categorical == [4]
    x = G(torch.zeros(2, spec.input_dim))
    assert x.shape == (2, len(cs.channel_names), 32, 32)
    D, _, _ = load_discriminator(run / "network-final.pt")
    logits, q = D(x)
    assert logits.shape == (2,) and q.cat_logits[0].shape == (2, 4)

    # the analysis of the run: its label measures, recomputed from its own assignments
    out = tmp_path / "analysis"
    done = _cli(
        "analyse",
        "--run",
        str(run),
        "--crops",
        str(crops),
        "--out",
        str(out),
        "--device",
        "cpu",
        *TRAIN,
        *ANALYSE,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assignments = pd.read_csv(out / "assignments.csv", keep_default_na=False)
    assert (assignments["label"].to_numpy() == cs.labels[assignments["crop_index"]]).all()
    labelled = assignments[assignments["label"] != ""]
    assert metrics["n_labelled"] == len(labelled) > 0
    assert metrics["nmi"] == pytest.approx(
        normalized_mutual_info_score(labelled["label"], labelled["category"])
    )
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(labelled["label"], labelled["category"]))
    cmap = pd.read_csv(out / "category_map.csv", keep_default_na=False)
    assert cmap["category"].tolist() == [0, 1, 2, 3]
    for k, group in labelled.groupby("category"):
        counts = group["label"].value_counts()
        row = cmap[cmap["category"] == k].iloc[0]
        assert counts[row["label"]] == counts.iloc[0]  # a majority label (ties: any of them)
        assert float(row["purity"]) == pytest.approx(counts.iloc[0] / len(group))
    assert set(metrics["baselines"]) == {"kmeans_pixels", "kmeans_morphology", "best_feature"}
    assert np.isfinite(metrics["quality"]["fd_morphology"]) and metrics["quality"]["n_synthetic"] == 64
    assert (out / "report" / "index.html").is_file() and (out / "report" / "explorer.html").is_file()
