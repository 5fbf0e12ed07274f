"""The real workflow through SLURM: a single-node cluster on this machine, one SLURM job per
Snakemake job, every output complete.

The cluster comes from ``tests/slurm/start_cluster.sh`` (Debian's slurm-wlm and munge, both
daemons as root, accounting off). The run uses the repository's SLURM profile with the
site-specific and GPU settings taken out (see :func:`local_test_profile`): this cluster has no
GPU, no accounting and only this machine's cores. Run with ``pytest --runslurm`` (or
``INFOGAN_TEST_SLURM=1``) as root: about 3 minutes on 2 busy CPU cores (176 s for the
workflow), most of it Snakemake and torch starting inside each of the 10 jobs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml

from infogan_cells.validate import validate_file

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "profile.yaml"
START = REPO / "tests" / "slurm" / "start_cluster.sh"
STOP = REPO / "tests" / "slurm" / "stop_cluster.sh"
TINY = REPO / "tests" / "workflow" / "tiny.yaml"

# Resources that only make sense on a real site: a named partition or account, GPUs.
SITE_RESOURCES = {"slurm_partition", "slurm_account", "gpu", "gpu_model", "gres", "cpus_per_gpu",
                  "tasks_per_gpu", "constraint", "qos"}

# The plugin's defaults poll `sacct` (accounting is off here: it would wait forever) first after
# 40 s and then every 40-180 s; a small workflow then spends minutes waiting on itself.
FAST_POLLING = {
    "slurm-status-command": "squeue",  # finished jobs stay in squeue for MinJobAge (slurm.conf.in)
    "slurm-init-seconds-before-status-checks": 2,
    "seconds-between-status-checks": 2,
    "slurm-keep-successful-logs": True,  # the test reads the job ids from the log paths
}


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


def local_test_profile(profile: dict, cpus: int) -> dict:
    """The repository's SLURM profile, cut down to what the local test cluster offers.

    Site resources and GPUs go; memory asks are small (memory is not enforced here, but a CI
    machine has less than a GPU node); threads are capped at the node's cores; status polling
    is fast and uses squeue.
    """
    out = copy.deepcopy(profile)
    out["default-resources"] = {k: v for k, v in out.get("default-resources", {}).items()
                                if k not in SITE_RESOURCES}
    out["default-resources"]["mem_mb"] = 500
    for rule, res in out.get("set-resources", {}).items():
        out["set-resources"][rule] = {k: v for k, v in res.items() if k not in SITE_RESOURCES}
        out["set-resources"][rule]["mem_mb"] = 500
    out["set-threads"] = {rule: min(int(n), cpus) for rule, n in out.get("set-threads", {}).items()}
    out.update(FAST_POLLING)
    out.update({"jobs": 10, "latency-wait": 5, "retries": 0})
    return out


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


def slurm_jobs_by_rule(workdir: Path) -> dict[str, list[str]]:
    """SLURM job ids per rule, from the plugin's logs ``.snakemake/slurm_logs/rule_<name>/[<wildcards>/]<id>.log``."""
    jobs: dict[str, list[str]] = {}
    for log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
        rule_dir = next(p for p in log.relative_to(workdir / ".snakemake" / "slurm_logs").parts
                        if p.startswith("rule_"))
        jobs.setdefault(rule_dir.removeprefix("rule_"), []).append(log.stem)
    return jobs


def scontrol_job(job_id: str) -> dict[str, str]:
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
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


def test_slurm_profile_dry_run_asks_for_gpus(tmp_path):
    """The repository profile parses against the real workflow and puts training on a GPU."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--workflow-profile", str(PROFILE.parent), "--configfile", str(TINY), "-n"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-5000:]
    text = res.stdout + res.stderr
    train = text.split("rule train:")[1].split("\n\n")[0]
    assert re.search(r"resources:.*\bgpu=1\b", train), train
    assert "cpus_per_gpu=8" in train
    crop = text.split("rule crop_image:")[1].split("\n\n")[0]
    assert not re.search(r"\bgpu=", crop), crop


@pytest.mark.slurm
def test_workflow_runs_as_slurm_jobs(tmp_path, slurm_cluster):
    profile_dir = tmp_path / "profile"
    profile_dir.mkdir()
    profile = local_test_profile(yaml.safe_load(PROFILE.read_text()), node_cpus())
    (profile_dir / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    # Plumbing, not learning: one seed and a few training steps on top of tiny.yaml.
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text("train:\n  seeds: [0]\n  total_images: 128\n  tick_images: 64\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", str(profile_dir), "--configfile", str(TINY), str(smaller)]

    started = time.monotonic()
    res = run_with_interrupt(cmd, workdir, timeout=900)
    elapsed = time.monotonic() - started
    print(f"workflow through SLURM: {elapsed:.0f} s")
    assert res.returncode == 0, res.stderr[-8000:]

    # One SLURM job per Snakemake job: 2 crop jobs (one per image), training, 2 synthesis shards;
    # compare_seeds is a local rule and runs beside Snakemake.
    jobs = slurm_jobs_by_rule(workdir)
    assert {r: len(ids) for r, ids in jobs.items()} == {
        "simulate": 1, "crop_image": 2, "gather_crops": 1, "train": 1, "analyse": 1,
        "synthesise_shard": 2, "gather_synthesis": 1}, jobs
    assert (workdir / "results" / "analyse" / "seeds" / "seeds.json").exists()
    all_ids = [i for ids in jobs.values() for i in ids]
    assert len(set(all_ids)) == len(all_ids)
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: .*/rule_(\w+?)/", res.stderr))
    assert set(submitted) == set(all_ids)
    for rule, ids in jobs.items():
        for job_id in ids:
            info = scontrol_job(job_id)  # kept by MinJobAge in slurm.conf
            assert info["JobState"] == "COMPLETED", (rule, info)
            assert info["ExitCode"] == "0:0", (rule, info)
            assert info["Comment"].startswith(f"rule_{rule}"), (rule, info)
            assert Path(info["WorkDir"]) == workdir
    assert scontrol_job(jobs["train"][0])["NumCPUs"] == str(min(2, node_cpus()))

    # Every output is there and up to date ...
    dry = subprocess.run([*cmd, "-n"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert not list((workdir / "results").rglob("*.tmp"))
    # ... and complete: every HDF5 file reads in full, the synthetic set validates.
    h5_files = sorted((workdir / "results").rglob("*.h5"))
    assert {p.relative_to(workdir).as_posix() for p in h5_files} >= {
        "results/crops/crops.h5", "results/synthesis/synth.h5",
        "results/synthesis/shards/synth-0-of-2.h5", "results/synthesis/shards/synth-1-of-2.h5"}
    for path in h5_files:
        assert read_every_dataset(path) > 0, path
    master = workdir / "results" / "synthesis" / "synth.h5"
    assert validate_file(master) == []
    with h5py.File(master, "r") as f:
        assert f["images"].shape == (64, 32, 32, 3)
    assert (workdir / "results/train/seed0/network-final.pt").stat().st_size > 0
    metrics = json.loads((workdir / "results/analyse/seed0/metrics.json").read_text())
    assert 0 <= metrics["nmi"] <= 1
