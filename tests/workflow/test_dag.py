"""The workflow's DAG, config validation, lint and format: fast checks, no job runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_default_dry_run_has_one_crop_job_per_image(tmp_path, smk):
    res = smk(tmp_path, "-n", "--cores", "2", "--workflow-profile", "none")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    assert counts["crop_image"] == 12  # simulate.n_images in config/config.yaml
    assert counts["train"] == counts["analyse"] == 1  # train.seeds in config/config.yaml
    assert counts["compare_seeds"] == 1
    assert counts["synthesise_shard"] == 2
    assert counts["gather_synthesis"] == 1


def test_seeds_and_shards_scale_the_dag(tmp_path, tiny_config, smk):
    extra = tmp_path / "shards.yaml"
    extra.write_text("synthesis:\n  shards: 5\n  n: 100\n")
    res = smk(
        tmp_path,
        "-n",
        "--cores",
        "2",
        "--workflow-profile",
        "none",
        "--configfile",
        str(tiny_config),
        str(extra),
    )
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    assert counts["train"] == 2 and counts["analyse"] == 2
    assert counts["synthesise_shard"] == 5
    assert counts["crop_image"] == 2


@pytest.mark.parametrize(
    ("yaml_text", "keys"),
    [
        ("train:\n  batch_size: 0\n", ["batch_size"]),
        ("train:\n  batchsize: 8\n", ["batchsize"]),
        ("crop:\n  normalise: zscore\n", ["zscore"]),
        # rules between keys (TrainConfig.check), refused at parse time, not when training starts
        ("train:\n  batch_size: 1\n", ["train.batch_size"]),
        (
            "train:\n  q_overcluster: 5\n  lambda_pair_mi: 0\n",
            ["train.q_overcluster", "train.lambda_pair_mi"],
        ),
        ("train:\n  prior: learned\n  prior_floor: 0.5\n", ["train.prior_floor", "train.prior"]),
        (
            "train:\n  diff_augment: {rot90: false, flip: false, shift: 0, scale: 0, brightness: 0,"
            " contrast: 0, tint: 0}\n",
            ["train.lambda_pair_mi", "train.diff_augment"],
        ),
        ("crop:\n  size: 48\n", ["crop.size", "not a power of two"]),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, yaml_text, keys, smk):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    res = smk(tmp_path, "--cores", "1", "--workflow-profile", "none", "--configfile", str(bad))
    assert res.returncode != 0
    for key in keys:
        assert key in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "logs").exists()


def test_lint_is_clean():
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1", "--workflow-profile", "none"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = res.stdout + res.stderr
    assert res.returncode == 0 and not re.findall(r"^\s+\* (.+?):?$", text, re.M), text


def test_snakefmt_is_clean():
    exe = shutil.which("snakefmt") or str(REPO / ".venv" / "bin" / "snakefmt")
    res = subprocess.run(
        [exe, "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
