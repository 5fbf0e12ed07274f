"""`infogan-cells train` on a crop store made from each shared data set, on the CPU: the crop
command, then the train command, as a user runs them, and the run directory they leave."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from infogan_cells.checkpoint import load_discriminator, load_generator
from infogan_cells.store import read_crop_store

pytestmark = pytest.mark.shared_data

# (folder, the crop command's input inside it, extra crop arguments)
SETS = {
    "bbbc041": ("bbbc041/training_subset.json", ["--images", "images/00c8364b-8c85-4502-bcfe-64736fe76815.png"]),
    "iml_malaria": ("iml_malaria/annotations_bbbc041_format.json", ["--images", "images/PA171695.JPG"]),
    "nih": ("nih_malaria_cell_images", []),
    "jurkat": ("jurkat_ifc_cellcycle/cells.npz", []),
}
TRAIN = ["--set", "train.total_images=2048", "--set", "train.batch_size=64", "--set", "train.g_channels=8",
         "--set", "train.d_channels=8", "--set", "train.tick_images=512", "--set", "train.snapshot_images=1024",
         "--set", "train.checkpoint_images=1024", "--set", "train.latent.categorical=[4]"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infogan_cells", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("name", sorted(SETS))
def test_train_command_on_each_shared_data_set(name, shared_data, tmp_path):
    source, extra = SETS[name]
    crops = tmp_path / "crops.h5"
    done = _cli("crop", "--input", str(shared_data / source), "--size", "32", "--out", str(crops), *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    cs = read_crop_store(crops)
    assert len(cs) >= 20
    run = tmp_path / "run"
    done = _cli("train", "--crops", str(crops), "--out", str(run), "--device", "cpu", "--no-progress",
                "--seed", "0", *TRAIN)
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
