"""The training stage: run directory, resume-after-kill equivalence, bad input, augmentation and IIC
in the loop. Learned prior, semi-supervision and partial labels: tests/test_train_labels.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_train import SPEC, make_store, tiny_config

from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig, from_mapping
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.checkpoint import load_generator
from infogan_cells.training import loop as train_mod
from infogan_cells.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("crops") / "crops.h5")


def state_dicts(run_dir):
    payload = torch.load(run_dir / "network-final.pt", weights_only=True)
    nets = {k: payload[k]["state_dict"] for k in ("generator", "generator_ema", "discriminator")}
    for i, entry in enumerate(payload.get("generator_snapshots", [])):
        nets[f"snapshot{i}"] = entry["state_dict"]
    return nets


def assert_identical(a, b):
    for net in a:
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"


def losses(run_dir):
    recs = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in recs]


# --------------------------------------------------------------------------------------
# The run directory


def test_run_directory(store, tmp_path):
    run = train(store, tmp_path / "run", tiny_config(), seed=0, device="cpu")
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "stats.jsonl", "samples.gif", "loss.png", "network-final.pt"} <= names
    assert "resume.pt" not in names  # superseded by the final network
    assert not [n for n in names if n.endswith(".tmp")]
    recs = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in recs] == [32, 64, 96]
    assert {
        "kimg",
        "seconds",
        "images_per_s",
        "Loss/D/adv",
        "Loss/G/adv",
        "Loss/Q/cat",
        "Loss/Q/cont",
    } <= set(recs[0])
    with Image.open(run / "samples-000000.png") as grid:  # 2 category rows, 8 sweep columns, 4x enlarged
        assert grid.mode == "RGB" and grid.size == ((8 * 17 + 1) * 4, (2 * 17 + 1) * 4)
    with Image.open(run / "samples.gif") as gif:
        assert gif.format == "GIF"
    G, spec, meta = load_generator(run, ema=True)
    assert spec == SPEC
    assert meta["img_size"] == 16 and meta["channel_names"] == ["ch0"] and meta["images_seen"] == 96
    assert meta["category_prior"] == [[0.5, 0.5]] and meta["category_labels"] == []
    assert "total_images: 96" in meta["config"]
    assert "total_images: 96" in (run / "config.yaml").read_text()


def test_finished_run_returns_at_once(store, tmp_path, monkeypatch):
    config = tiny_config()
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    before = (run / "network-final.pt").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("a finished run must not read its crops again")

    monkeypatch.setattr(train_mod, "load_crops", fail)
    assert train(store, run, config, seed=0, device="cpu") == run
    assert (run / "network-final.pt").stat().st_mtime_ns == before
    with pytest.raises(InputError, match="different training config or seed"):
        train(store, run, config, seed=1, device="cpu")


def test_training_leaves_the_global_rng_alone(store, tmp_path):
    state = torch.get_rng_state()
    train(store, tmp_path / "run", tiny_config(total_images=16), seed=0, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)


class Killed(Exception):
    pass


@pytest.mark.parametrize(("precision", "neighbours"), [("fp32", False), ("bf16", False), ("fp32", True)])
def test_resume_after_kill_is_bit_identical(store, tmp_path, monkeypatch, precision, neighbours):
    # learned prior from step 2, the checkpoint at step 6; bf16 autocast runs on the CPU as on CUDA;
    # every random draw of the loop is on: augmentation, DiffAugment with intensity jitter, the IIC term
    # with its over-clustering head, a labelled batch per step, a held-out split; with ``neighbours``
    # the IIC term's positives are neighbours, mined again from D's features at steps 4, 8, 12 and 16
    # (so the resumed run must take the ones mined before the checkpoint from it); the EMA generator
    # is kept at 80 (before the checkpoint: the resumed run must take it from resume.pt) and 120 images
    extra = {}
    if neighbours:  # noisy copies of the crops: each crop's neighbours are then distinct images
        extra = {"pair_neighbours": 3, "pair_neighbours_refresh": 0.2}
        store = make_store(tmp_path / "noisy.h5")
        with h5py.File(store, "r+") as f:
            x = f["images"][...].astype(int) + np.random.default_rng(1).integers(0, 60, f["images"].shape)
            f["images"][...] = np.clip(x, 0, 255).astype(np.uint8)
    config = tiny_config(
        **extra,
        latent=LatentSpec(z_dim=4, categorical=[6], n_continuous=1),
        prior="learned",
        prior_warmup=0.1,
        prior_momentum=0.5,
        batch_size=8,
        total_images=160,
        augment=AugmentConfig(rot90=True, flip=True, shift=1),
        diff_augment=AugmentConfig(
            rot90=False, flip=True, shift=1, rotate=10, scale=0.1, brightness=0.1, contrast=0.1
        ),
        lambda_pair_mi=0.5,
        pair_mi_entropy=0.5,
        q_overcluster=8,
        supervised_fraction=0.5,
        supervised_batch=4,
        holdout_fraction=0.2,
        tick_images=40,
        checkpoint_images=88,  # a tick straddles the checkpoint
        generator_snapshots=3,
        precision=precision,
    )
    whole = train(store, tmp_path / "whole", config, seed=5, device="cpu")

    save = train_mod._save_resume

    def save_then_die(path, state):
        save(path, state)
        raise Killed

    monkeypatch.setattr(train_mod, "_save_resume", save_then_die)
    with pytest.raises(Killed):
        train(store, tmp_path / "killed", config, seed=5, device="cpu")
    assert (tmp_path / "killed" / "resume.pt").exists()
    assert not (tmp_path / "killed" / "network-final.pt").exists()
    monkeypatch.setattr(train_mod, "_save_resume", save)
    resumed = train(store, tmp_path / "killed", config, seed=5, device="cpu")
    assert_identical(state_dicts(whole), state_dicts(resumed))
    assert {"snapshot0", "snapshot1"} <= set(state_dicts(whole))
    assert losses(whole) == losses(resumed)
    meta_a = torch.load(whole / "network-final.pt", weights_only=True)["meta"]
    meta_b = torch.load(resumed / "network-final.pt", weights_only=True)["meta"]
    assert meta_a["category_prior"] == meta_b["category_prior"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """A real kill: a subprocess is SIGKILLed once its first resume.pt exists, then rerun."""
    store = make_store(tmp_path / "crops.h5", n=32)
    config = tiny_config(total_images=1600, checkpoint_images=400, tick_images=200, snapshot_images=800)
    whole = train(store, tmp_path / "whole", config, seed=2, device="cpu")
    code = (
        "import sys; from infogan_cells.training.loop import train; from infogan_cells.config import TrainConfig, "
        "from_mapping; import yaml; "
        f"train({str(store)!r}, sys.argv[1], from_mapping(TrainConfig, yaml.safe_load(open(sys.argv[2]))), "
        "seed=2, device='cpu')"
    )
    cfg_file = tmp_path / "train.yaml"
    import yaml

    from infogan_cells.config import to_dict

    cfg_file.write_text(yaml.safe_dump(to_dict(config)))
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(run), str(cfg_file)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "resume.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (run / "network-final.pt").exists()
    subprocess.run([sys.executable, "-c", code, str(run), str(cfg_file)], check=True, env=env)
    assert_identical(state_dicts(whole), state_dicts(run))


# --------------------------------------------------------------------------------------
# Bad input


def test_store_that_is_not_ours(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((4, 16, 16, 1), np.uint8)
    with pytest.raises(InputError, match="not an infogan-cells crop store"):
        train(path, tmp_path / "run", tiny_config(), seed=0, device="cpu")


def test_empty_store(tmp_path):
    path = make_store(tmp_path / "crops.h5", n=0)
    with pytest.raises(InputError, match="holds no crops to train on"):
        train(path, tmp_path / "run", tiny_config(), seed=0, device="cpu")


def test_store_whose_crops_all_failed_qc(tmp_path):
    path = make_store(tmp_path / "crops.h5", n=4, qc_pass=np.zeros(4, bool))
    with pytest.raises(InputError, match="4 failed QC"):
        train(path, tmp_path / "run", tiny_config(), seed=0, device="cpu")


def test_crop_size_that_is_not_a_power_of_two(tmp_path):
    path = make_store(tmp_path / "crops.h5", n=4, size=40)
    with pytest.raises(InputError, match="power of two"):
        train(path, tmp_path / "run", tiny_config(), seed=0, device="cpu")


def test_config_key_that_does_not_exist():
    with pytest.raises(ConfigError, match="'train.learning_rate' does not exist"):
        from_mapping(TrainConfig, {"learning_rate": 1e-3}, "train.")


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"batch_size": 0}, "'train.batch_size': 0 must be >= 2"),
        ({"loss": "wasserstein"}, "'train.loss': 'wasserstein' is not one of"),
        ({"lr_g": "fast"}, "'train.lr_g': expected a number"),
    ],
)
def test_config_bad_values(mapping, match):
    with pytest.raises(ConfigError, match=match):
        from_mapping(TrainConfig, mapping, "train.")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 1}, "BatchNorm needs batches of 2"),
        ({"prior": "learned", "prior_floor": 0.6}, "'train.prior_floor': 0.6 x 2 categories exceeds 1"),
        ({"lambda_pair_mi": 1.0}, "'train.lambda_pair_mi': needs diff_augment"),
    ],
)
def test_train_rejects_bad_combinations(store, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        train(store, tmp_path / "run", tiny_config(**kw), seed=0, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device(store, tmp_path):
    with pytest.raises(InputError, match="CUDA is not available"):
        train(store, tmp_path / "run", tiny_config(), seed=0, device="cuda")
    assert not (tmp_path / "run").exists()


def test_unknown_device(store, tmp_path):
    with pytest.raises(InputError, match="not a device name"):
        train(store, tmp_path / "run", tiny_config(), seed=0, device="gpu0")


# --------------------------------------------------------------------------------------
# Augmentation in the loop (the transforms themselves: tests/test_augment.py)


def test_training_with_float_augmentation_of_the_real_crops(store, tmp_path):
    """Free rotation, zoom and intensity jitter of the real crops (they need floats) train."""
    aug = AugmentConfig(rot90=True, flip=True, shift=1, rotate=20, scale=0.1, brightness=0.1, contrast=0.2)
    run = train(
        store,
        tmp_path / "run",
        tiny_config(augment=aug, diff_augment=aug, lambda_pair_mi=0.5),
        seed=0,
        device="cpu",
    )
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert records[-1]["images_seen"] == 96
    assert all(np.isfinite(r["Loss/D/adv"]) and np.isfinite(r["Loss/Q/pair_mi"]) for r in records)


def test_over_clustering_head_trains_with_the_iic_term_and_is_saved(store, tmp_path):
    from infogan_cells.model.checkpoint import load_discriminator

    aug = AugmentConfig(rot90=True, flip=True, shift=1)
    config = tiny_config(diff_augment=aug, lambda_pair_mi=1.0, q_overcluster=6)
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["Loss/Q/pair_mi_over"]) and r["MI/Q/pair_over"] >= -1e-6 for r in records)
    D, _, _ = load_discriminator(run / "network-final.pt")
    assert D.q_over is not None and D.q_over.out_features == 6
    q = D.q_head(D.trunk(torch.zeros(3, 1, 16, 16)))
    assert q.over_logits.shape == (3, 6) and q.cat_logits[0].shape == (3, 2)
    with pytest.raises(ConfigError, match="train.q_overcluster"):
        train(store, tmp_path / "bad", tiny_config(q_overcluster=6), seed=0, device="cpu")


def test_diff_augment_needs_a_generator():
    from infogan_cells.training.step import InfoGANStep, build_networks, build_optimizers

    config = tiny_config(diff_augment=AugmentConfig(rot90=False, flip=True, shift=0))
    G, D = build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(0))
    step = InfoGANStep(
        G, D, *build_optimizers(G, D, config, torch.device("cpu")), SPEC, config, torch.device("cpu")
    )
    from infogan_cells.model.latent import sample_latent

    latent = sample_latent(SPEC, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="diff_augment needs a generator"):
        step(torch.zeros(4, 1, 16, 16), latent)
    terms, _ = step(torch.zeros(4, 1, 16, 16), latent, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(terms["Loss/D/adv"])
    assert "Loss/Q/pair_mi" not in terms


def test_pair_mi_runs_in_the_loop(store, tmp_path):
    config = tiny_config(
        total_images=32, lambda_pair_mi=1.0, diff_augment=AugmentConfig(rot90=False, flip=True, shift=1)
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    rec = json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    assert rec["MI/Q/pair"] >= -1e-6 and "Loss/Q/pair_mi" in rec


def test_batchnorm_recalibration_depends_only_on_the_real_crops():
    from infogan_cells.training.averaging import recalibrate_batchnorm
    from infogan_cells.training.step import build_networks

    config = tiny_config()
    _, D1 = build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(0))
    _, D2 = build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(0))
    D1(torch.randn(8, 1, 16, 16))  # different training histories: different running statistics
    D2(torch.randn(8, 1, 16, 16) * 3)
    crops = torch.randint(
        0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    for D in (D1, D2):
        D.eval()
        recalibrate_batchnorm(D, crops, 8, torch.Generator().manual_seed(2))
        assert not D.training
    b1 = dict(D1.named_buffers())
    b2 = dict(D2.named_buffers())
    assert b1.keys() == b2.keys() and any("running_mean" in k for k in b1)
    for k in b1:
        if "running" in k:
            assert torch.equal(b1[k], b2[k]), k
    assert all(m.momentum == 0.1 for m in D1.modules() if isinstance(m, torch.nn.BatchNorm2d))
