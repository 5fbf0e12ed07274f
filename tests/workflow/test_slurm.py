"""The real workflow through SLURM: a single-node cluster on this machine, one SLURM job per
Snakemake job, every output complete.

The cluster comes from ``tests/slurm/start_cluster.sh`` (Debian's slurm-wlm and munge, both
daemons as root, accounting off, no GPU). The run uses the repository's SLURM profile as
shipped; the command line gives only the partition (``--default-resources
slurm_partition=local``). Run with ``pytest --runslurm`` (or ``INFOGAN_TEST_SLURM=1``) as root:
a few minutes on 2 busy CPU cores, most of it Snakemake and torch starting inside each of the
10 jobs, and the profile's status polling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from infogan_cells.data.store import write_crop_store
from infogan_cells.preprocess.crop import OBS_COLUMNS
from infogan_cells.synthesis.validate import validate_file

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
START = REPO / "tests" / "slurm" / "start_cluster.sh"
STOP = REPO / "tests" / "slurm" / "stop_cluster.sh"
TINY = REPO / "tests" / "workflow" / "tiny.yaml"
GPU_RULES = ("train", "analyse", "synthesise_shard")


def cluster_is_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    return res.returncode == 0 and "is UP" in res.stdout


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node cluster; stopped afterwards if this fixture started it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test runs as root: it installs slurm-wlm and munge and starts their daemons")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it (Debian: slurm-wlm, munge)")
    was_up = cluster_is_up()
    res = subprocess.run([str(START)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
            pytest.skip(f"could not install SLURM: {res.stderr.strip()[-2000:]}")
        pytest.fail(f"start_cluster.sh failed:\n{res.stderr[-5000:]}")
    yield
    if not was_up:
        subprocess.run([str(STOP)], capture_output=True, text=True, timeout=120)


def node_cpus() -> int:
    res = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True)
    return int(res.stdout.split()[0])


def run_with_interrupt(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd``; on timeout send SIGINT first, so Snakemake cancels its SLURM jobs."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"snakemake took more than {timeout} s:\n{err[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def slurm_jobs_by_rule(stderr: str) -> dict[str, list[str]]:
    """SLURM job ids per rule, from Snakemake's "submitted with SLURM jobid <id> (log: .../rule_<name>/...)"."""
    jobs: dict[str, list[str]] = {}
    for job_id, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+?)/", stderr):
        jobs.setdefault(rule, []).append(job_id)
    return jobs


def partition() -> str:
    res = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, check=True)
    return res.stdout.split()[0]


def scontrol_job(job_id: str) -> dict[str, str]:
    res = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    )
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


def read_every_dataset(path: Path) -> int:
    """Read every dataset of an HDF5 file in full (virtual datasets through their sources)."""
    n = 0

    def visit(name, obj):
        nonlocal n
        if isinstance(obj, h5py.Dataset):
            obj[()]
            n += 1

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return n


def dry_run_resources(smk, tmp_path: Path, *configs: Path) -> dict[str, str]:
    """The `resources:` line of the first job of each rule in a dry run of the shipped profile."""
    profile = ["--workflow-profile", str(PROFILE)]
    local = ["--default-resources", "slurm_partition=local"]
    res = smk(tmp_path, *profile, "--configfile", *map(str, configs), *local, "-n", timeout=300)
    assert res.returncode == 0, res.stderr[-5000:]
    text = res.stdout + res.stderr
    return {
        rule: text.split(f"rule {rule}:")[1].split("\n\n")[0].split("resources:")[1].splitlines()[0]
        for rule in ("crop_image", "gather_crops", *GPU_RULES)
    }


def test_slurm_profile_asks_for_a_gpu_only_when_the_config_says_cuda(tmp_path, smk):
    """The shipped profile, dry-run against the real workflow: no GPU with `device: cpu` (tiny.yaml)
    or `auto`; one per torch job with `device: cuda`; memory and time left to the job's input."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    for device in ("cpu", "auto", "cuda"):
        extra = tmp_path / f"{device}.yaml"
        extra.write_text(f"device: {device}\n")
        work = tmp_path / device
        work.mkdir()
        lines = dry_run_resources(smk, work, TINY, extra)
        for rule, line in lines.items():
            wants_gpu = device == "cuda" and rule in GPU_RULES
            assert bool(re.search(r"\bgpu=1\b", line)) == wants_gpu, (device, rule, line)
            assert "slurm_partition=local" in line
        if device == "cuda":
            assert "cpus_per_gpu=8" in lines["train"]
        # the crop store does not exist yet: memory follows it once it does
        assert "mem_mb=<TBD>" in lines["train"] and "mem_mb=<TBD>" in lines["gather_crops"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_training_memory_and_time_follow_the_crops_and_the_budget(tmp_path, device, smk):
    """With a crop store in place, the dry run resolves the training job's requests: memory from
    the store's uncompressed crops (2000 x 64 x 64 x 3 bytes = 24.6 MB; the file is ~0.5 MB),
    time from train.total_images at the device's assumed speed."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    n = 2000
    obs = pd.DataFrame(
        {
            "source_image": ["a"] * n,
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": 10,
            "max_col": 10,
            "label": [""] * n,
            "qc_pass": True,
            "qc_reason": [""] * n,
            "qc_clipped": False,
            "qc_inside": 1.0,
            "qc_size_ratio": 1.0,
            "qc_n_cells": 1,
            "qc_blur": 1.0,
            "box_height": 10.0,
            "box_width": 10.0,
            "scale": 10 / 64,
        }
    )
    store = tmp_path / "results" / "crops" / "crops.h5"
    store.parent.mkdir(parents=True)
    write_crop_store(
        store,
        np.zeros((n, 64, 64, 3), np.uint8),
        obs[list(OBS_COLUMNS)],
        ["R", "G", "B"],
        summary={},
        config="",
        compression=1,
    )
    assert store.stat().st_size < 2e6
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"device: {device}\ntrain:\n  total_images: 1200000\n")
    configs = ["--configfile", str(TINY), str(extra)]
    target = ["--allowed-rules", "train", "--", "results/train/seed0/network-final.pt"]
    res = smk(tmp_path, "--workflow-profile", str(PROFILE), *configs, "-n", *target, timeout=300)
    assert res.returncode == 0, res.stderr[-5000:]
    line = (res.stdout + res.stderr).split("rule train:")[1].split("resources:")[1].splitlines()[0]
    resources = dict(re.findall(r"(\w+)=([^,\s]+)", line))
    assert int(resources["mem_mb"]) == int(4000 + 1.2 * n * 64 * 64 * 3 / 1e6)  # 4029
    # 1.2 million images at 200 images/s on a GPU, 20 on CPUs, plus 30 min
    assert int(resources["runtime"]) == {"cuda": 130, "cpu": 1030}[device]
    assert resources.get("gpu") == ("1" if device == "cuda" else "0")


@pytest.mark.slurm
def test_workflow_runs_as_slurm_jobs(tmp_path, slurm_cluster, smk_command):
    # Plumbing, not learning: one seed and a few training steps on top of tiny.yaml (device: cpu).
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text("train:\n  seeds: [0]\n  total_images: 128\n  tick_images: 64\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    # The profile as shipped; only the partition comes from the command line.
    cmd = smk_command(
        workdir,
        "--workflow-profile",
        str(PROFILE),
        "--configfile",
        str(TINY),
        str(smaller),
        "--default-resources",
        f"slurm_partition={partition()}",
    )

    started = time.monotonic()
    res = run_with_interrupt(cmd, workdir, timeout=1200)
    elapsed = time.monotonic() - started
    print(f"workflow through SLURM: {elapsed:.0f} s")
    assert res.returncode == 0, res.stderr[-8000:]

    # One SLURM job per Snakemake job: 2 crop jobs (one per image), training, 2 synthesis shards;
    # compare_seeds is a local rule and runs beside Snakemake.
    jobs = slurm_jobs_by_rule(res.stderr)
    assert {r: len(ids) for r, ids in jobs.items()} == {
        "simulate": 1,
        "crop_image": 2,
        "gather_crops": 1,
        "train": 1,
        "analyse": 1,
        "synthesise_shard": 2,
        "gather_synthesis": 1,
    }, jobs
    assert (workdir / "results" / "analyse" / "seeds" / "seeds.json").exists()
    all_ids = [i for ids in jobs.values() for i in ids]
    assert len(set(all_ids)) == len(all_ids)
    for rule, ids in jobs.items():
        for job_id in ids:
            info = scontrol_job(job_id)  # kept by MinJobAge in slurm.conf
            assert info["JobState"] == "COMPLETED", (rule, info)
            assert info["ExitCode"] == "0:0", (rule, info)
            assert info["Comment"].startswith(f"rule_{rule}"), (rule, info)
            assert Path(info["WorkDir"]) == workdir
            assert info["Partition"] == partition()
            assert "gpu" not in info.get("TresPerNode", "") + info.get("TresPerJob", ""), (rule, info)
    train = scontrol_job(jobs["train"][0])
    assert train["NumCPUs"] == str(min(2, node_cpus()))
    # Training asked for memory after the crop store it loads: 4 GB plus 1.2x its uncompressed crops.
    with h5py.File(workdir / "results/crops/crops.h5", "r") as f:
        crops_mb = f["images"].size / 1e6
    asked = int(train["MinMemoryNode"].rstrip("M"))
    assert int(4000 + 1.2 * crops_mb) <= asked <= 4000 + 1.3 * crops_mb + 1, (asked, crops_mb)

    # Every output is there and up to date ...
    dry = subprocess.run([*cmd, "-n"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert not list((workdir / "results").rglob("*.tmp"))
    # ... and complete: every HDF5 file reads in full, the synthetic set validates.
    h5_files = sorted((workdir / "results").rglob("*.h5"))
    assert {p.relative_to(workdir).as_posix() for p in h5_files} >= {
        "results/crops/crops.h5",
        "results/synthesis/synth.h5",
        "results/synthesis/shards/synth-0-of-2.h5",
        "results/synthesis/shards/synth-1-of-2.h5",
    }
    for path in h5_files:
        assert read_every_dataset(path) > 0, path
    master = workdir / "results" / "synthesis" / "synth.h5"
    assert validate_file(master) == []
    with h5py.File(master, "r") as f:
        assert f["images"].shape == (64, 32, 32, 3)
    assert (workdir / "results/train/seed0/network-final.pt").stat().st_size > 0
    metrics = json.loads((workdir / "results/analyse/seed0/metrics.json").read_text())
    assert 0 <= metrics["nmi"] <= 1
