"""The real workflow end to end at toy size: every stage runs as a Snakemake job, and every
output is read back by the library that consumers use (h5py, tifffile, pandas)."""

from __future__ import annotations

import importlib.util
import json

import h5py
import pytest
import tifffile

from infogan_cells.data.store import read_crop_store
from infogan_cells.synthesis.validate import validate_file


@pytest.mark.slow  # about 1 min on 2 idle CPU cores, 2-3 min on busy ones
def test_tiny_pipeline_then_report(tmp_path, tiny_config, smk):
    res = smk(tmp_path, "--cores", "2", "--workflow-profile", "none", "--configfile", str(tiny_config))
    assert res.returncode == 0, res.stderr[-5000:]

    annotations = json.loads((tmp_path / "results/simulate/annotations.json").read_text())
    n_boxes = sum(len(entry["objects"]) for entry in annotations)
    crops = read_crop_store(tmp_path / "results/crops/crops.h5")
    skipped = sum(crops.summary["skipped"].values())
    assert crops.summary["n_boxes"] == n_boxes
    assert len(crops) == n_boxes - skipped - crops.summary["n_qc_dropped"]
    assert crops.images.shape[1:] == (32, 32, 3)
    assert set(crops.labels) <= {
        "red blood cell",
        "ring",
        "trophozoite",
        "schizont",
        "gametocyte",
        "leukocyte",
    }

    for seed in (0, 1):
        assert (tmp_path / f"results/train/seed{seed}/network-final.pt").stat().st_size > 0
        metrics = json.loads((tmp_path / f"results/analyse/seed{seed}/metrics.json").read_text())
        assert 0 <= metrics["nmi"] <= 1
        assert (tmp_path / f"results/analyse/seed{seed}/report/index.html").exists()
    # per-cell results for AnnData: one row per analysed crop (every crop here: QC failures are dropped)
    with h5py.File(tmp_path / "results/analyse/seed0/cells.h5ad", "r") as f:
        assert f.attrs["encoding-type"] == "anndata" and f["X"].shape[0] == len(crops)
    if importlib.util.find_spec("anndata"):
        import anndata

        cells = anndata.read_h5ad(tmp_path / "results/analyse/seed0/cells.h5ad")
        assert cells.n_obs == len(crops) and "confidence" in cells.obs and "q_continuous" in cells.obsm
    # benchmarks of the heavy jobs; progress in the logs as plain lines
    for bench in ("crop/smear_0000", "train/seed0", "analyse/seed0", "synthesise/shard0-of-2"):
        assert (tmp_path / f"logs/benchmarks/{bench}.tsv").read_text().startswith("s\th:m:s"), bench
    train_log = (tmp_path / "logs/train/seed0.log").read_text()
    assert "train: 512/512 img (100%)" in train_log and "\r" not in train_log
    choice = json.loads((tmp_path / "results/analyse/seeds/seeds.json").read_text())
    assert choice["chosen"] in {"seed0", "seed1"}

    master = tmp_path / "results/synthesis/synth.h5"
    assert validate_file(master) == []
    with h5py.File(master, "r") as f:
        assert f["images"].shape == (64, 32, 32, 3)
        assert f["images"].is_virtual
    stacks = sorted((tmp_path / "results/synthesis/tiff").glob("*.tif"))
    assert stacks
    assert sum(tifffile.imread(p).reshape(-1, 32, 32, 3).shape[0] for p in stacks) == 64

    # Nothing half-written anywhere.
    assert not list((tmp_path / "results").rglob("*.tmp"))

    res = smk(
        tmp_path,
        "--cores",
        "1",
        "--workflow-profile",
        "none",
        "--configfile",
        str(tiny_config),
        "--report",
        "report.html",
    )
    assert res.returncode == 0, res.stderr[-5000:]
    html = (tmp_path / "report.html").read_text()
    for section in ("1 Preprocessing", "2 Training", "3 Cell categories"):
        assert section in html
