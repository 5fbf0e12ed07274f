"""The training stage: run directory, resume-after-kill equivalence, imbalance options, bad input, augmentation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.draw import disk, rectangle

from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig, from_mapping
from infogan_cells.data.store import write_crop_store
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.augment import augment_batch, to_float, to_uint8
from infogan_cells.model.checkpoint import load_generator
from infogan_cells.training import loop as train_mod
from infogan_cells.training.averaging import effective_prior
from infogan_cells.training.loop import train

SPEC = LatentSpec(z_dim=4, categorical=[2], n_continuous=1)


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        latent=SPEC,
        total_images=96,
        batch_size=8,
        g_channels=4,
        d_channels=4,
        tick_images=32,
        snapshot_images=48,
        checkpoint_images=48,
        ema_beta=0.9,
        lambda_pair_mi=0.0,
        diff_augment=AugmentConfig(rot90=False, flip=False, shift=0),
        partial_labels=False,
    )  # the stores label 2 crops in 3: unsupervised unless a test asks
    base.update(kw)
    return TrainConfig(**base)


def make_store(path, n=24, size=16, channels=1, labels=("disk", "square"), qc_pass=None):
    """Disks and squares of random sizes, drawn with skimage.draw (label '' for every third crop)."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, channels), np.uint8)
    names = []
    for i in range(n):
        r = int(rng.integers(size // 5, size // 3))
        c = size // 2
        if i % 2:
            rr, cc = disk((c, c), r, shape=(size, size))
        else:
            rr, cc = rectangle((c - r, c - r), extent=(2 * r, 2 * r), shape=(size, size))
        images[i, rr, cc, :] = 200
        names.append("" if i % 3 == 2 or not labels else labels[i % 2])
    obs = pd.DataFrame(
        {
            "source_image": "synthetic",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": size,
            "max_col": size,
            "label": names,
            "qc_pass": np.ones(n, bool) if qc_pass is None else qc_pass,
            "qc_reason": "",
        }
    )
    write_crop_store(path, images, obs, [f"ch{i}" for i in range(channels)], csv=False)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("crops") / "crops.h5")


def state_dicts(run_dir):
    payload = torch.load(run_dir / "network-final.pt", weights_only=True)
    return {k: payload[k]["state_dict"] for k in ("generator", "generator_ema", "discriminator")}


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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_kill_is_bit_identical(store, tmp_path, monkeypatch, precision):
    # learned prior from step 2, the checkpoint at step 6; bf16 autocast runs on the CPU as on CUDA;
    # every random draw of the loop is on: augmentation, DiffAugment with intensity jitter, the IIC term
    # with its over-clustering head, a labelled batch per step, a held-out split
    config = tiny_config(
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
        checkpoint_images=48,  # a tick straddles the checkpoint
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
# Imbalance: learned prior, semi-supervision, over-clustering


def test_learned_prior_is_floored_and_stored(store, tmp_path):
    config = tiny_config(
        latent=LatentSpec(z_dim=4, categorical=[6], n_continuous=0),
        prior="learned",
        prior_floor=0.05,
        prior_warmup=0.0,
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    _, _, meta = load_generator(run)
    (prior,) = meta["category_prior"]
    assert len(prior) == 6 and sum(prior) == pytest.approx(1.0)
    assert min(prior) >= 0.05 - 1e-7
    assert "category_prior" in json.loads((run / "stats.jsonl").read_text().splitlines()[-1])


def test_effective_prior_mixes_in_the_floor():
    (p,) = effective_prior([torch.tensor([1.0, 0.0, 0.0, 0.0])], 0.1)
    assert torch.allclose(p, torch.tensor([0.7, 0.1, 0.1, 0.1]))


def test_semi_supervised_names_categories_by_sorted_label(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    config = tiny_config(
        latent=LatentSpec(z_dim=4, categorical=[3], n_continuous=1), supervised_fraction=0.5, total_images=16
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    _, _, meta = load_generator(run)
    assert meta["category_labels"] == ["apple", "zebra"]
    assert "Loss/Q/sup" in json.loads((run / "stats.jsonl").read_text().splitlines()[-1])


def test_semi_supervision_teaches_q_the_labels_from_a_few_crops(tmp_path):
    """4 labelled disks and 4 labelled squares (a class-balanced batch of 32 drawn from them every step:
    with 8, most seeds never separate them) are enough
    for Q to sort all 48 crops by shape."""
    from infogan_cells.analysis.codes import assign_with_q
    from infogan_cells.data.store import read_crop_store
    from infogan_cells.model.checkpoint import load_discriminator

    store = make_store(tmp_path / "crops.h5", n=48, labels=("disk", "square"))
    config = tiny_config(
        supervised_fraction=0.25,
        supervised_batch=32,
        lambda_sup=10.0,
        total_images=4800,
        batch_size=16,
        tick_images=2400,
        snapshot_images=4800,
        checkpoint_images=4800,
        d_channels=8,
        lr_d=1e-3,
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    D, _, meta = load_discriminator(run / "network-final.pt")
    cs = read_crop_store(store)
    pred, _ = assign_with_q(D, cs.images)
    names = np.array(meta["category_labels"])[pred]
    labelled = cs.labels != ""
    assert (names[labelled] == cs.labels[labelled]).mean() >= 0.9


def test_holdout_crops_are_kept_out_of_training_and_recorded(store, tmp_path):
    from infogan_cells.data.store import holdout_split

    run = train(store, tmp_path / "run", tiny_config(holdout_fraction=0.25), seed=0, device="cpu")
    _, _, meta = load_generator(run)
    hold, _ = holdout_split(24, 0.25)
    assert meta["holdout"] == hold.tolist() and len(hold) == 6
    assert meta["n_crops"] == 18
    _, _, plain = load_generator(train(store, tmp_path / "all", tiny_config(), seed=0, device="cpu"))
    assert plain["holdout"] == [] and plain["n_crops"] == 24


def test_semi_supervised_needs_a_category_per_label(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=("a", "b"))
    config = tiny_config(latent=LatentSpec(z_dim=4, categorical=[3], n_continuous=1), supervised_fraction=0.5)
    store3 = tmp_path / "three.h5"
    with h5py.File(store, "r") as f:  # relabel into 4 classes
        n = len(f["images"])
    make_store(store3, n=n, labels=("a", "b"))
    from infogan_cells.data.store import read_crop_store

    cs = read_crop_store(store3)
    cs.obs["label"] = ["a", "b", "c", "d"] * (n // 4)
    write_crop_store(store3, cs.images, cs.obs, cs.channel_names, csv=False)
    with pytest.raises(ConfigError, match="3 categories but the crops have 4 labels"):
        train(store3, tmp_path / "run", config, seed=0, device="cpu")


def test_semi_supervised_needs_labels(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=())
    with pytest.raises(InputError, match="no crop has a label"):
        train(store, tmp_path / "run", tiny_config(supervised_fraction=0.5), seed=0, device="cpu")


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
# Augmentation on the device


def _dihedral(image):
    out = []
    for k in range(4):
        r = torch.rot90(image, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_augmentation_draws_from_the_dihedral_group():
    x = torch.arange(2 * 16, dtype=torch.uint8).reshape(1, 2, 4, 4).repeat(64, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(rot90=True, flip=True, shift=0), torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    group = _dihedral(x[0])
    assert all(any(torch.equal(y[i], g) for g in group) for i in range(64))
    assert len({tuple(y[i].flatten().tolist()) for i in range(64)}) == 8
    rot_only = augment_batch(
        x, AugmentConfig(rot90=True, flip=False, shift=0), torch.Generator().manual_seed(0)
    )
    rots = group[::2]
    assert all(any(torch.equal(rot_only[i], g) for g in rots) for i in range(64))
    assert torch.equal(x, torch.arange(2 * 16, dtype=torch.uint8).reshape(1, 2, 4, 4).repeat(64, 1, 1, 1))


def test_augmentation_off_is_identity_and_seeded_when_on():
    x = torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    off = AugmentConfig(rot90=False, flip=False, shift=0)
    assert torch.equal(augment_batch(x, off, torch.Generator()), x)
    on = AugmentConfig(rot90=True, flip=True, shift=2)
    a = augment_batch(x, on, torch.Generator().manual_seed(1))
    b = augment_batch(x, on, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_shift_moves_content_and_repeats_edges():
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    y = augment_batch(x, AugmentConfig(rot90=False, flip=False, shift=2), torch.Generator().manual_seed(0))
    pos = [divmod(int(y[i, 0].flatten().argmax()), 9) for i in range(64)]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in pos)
    assert len(set(pos)) > 10
    assert all(int(y[i].sum()) == 255 for i in range(64))  # one bright pixel, nothing wrapped in


def test_float_conversion_round_trips():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    f = to_float(x)
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), x)


def test_free_rotation_and_zoom_are_differentiable_and_need_floats():
    cfg = AugmentConfig(rot90=False, flip=False, shift=0, rotate=30, scale=0.2)
    x = torch.zeros(16, 1, 17, 17)
    x[:, :, 8, 8] = 1.0
    x.requires_grad_(True)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    centre = y.detach()[:, 0, 7:10, 7:10].sum(dim=(1, 2))  # rotation and zoom about the centre keep it there
    assert torch.all(centre > 0.5 * y.detach()[:, 0].sum(dim=(1, 2)))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="need floating-point images"):
        augment_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), cfg, torch.Generator())


def test_intensity_jitter_changes_what_it_says_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 8, 8, generator=g) * 1.2 - 0.6

    def run(**kw):
        cfg = AugmentConfig(rot90=False, flip=False, shift=0, **kw)
        return augment_batch(x, cfg, torch.Generator().manual_seed(3))

    bright = run(brightness=0.2)
    offset = (bright - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6)  # one offset per image
    assert offset[:, 0].abs().max() <= 0.4 + 1e-6 and offset[:, 0].std() > 0.05
    contrast = run(contrast=0.5)
    assert torch.allclose(contrast.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5)  # mean kept
    ratio = contrast.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.std() > 0.1
    sat = run(saturation=0.5)
    assert torch.allclose(sat.mean(dim=1), x.mean(dim=1), atol=1e-5)  # grey level of each pixel kept
    assert not torch.allclose(sat, x)
    assert torch.equal(
        augment_batch(
            x[:, :1],
            AugmentConfig(rot90=False, flip=False, shift=0, saturation=0.5),
            torch.Generator().manual_seed(3),
        ),
        x[:, :1],
    )  # one channel: no-op
    assert torch.equal(run(brightness=0.2, contrast=0.3), run(brightness=0.2, contrast=0.3))  # seeded
    xg = x.clone().requires_grad_(True)
    augment_batch(
        xg,
        AugmentConfig(rot90=False, flip=False, shift=0, brightness=0.1, contrast=0.2, saturation=0.2),
        torch.Generator().manual_seed(0),
    ).square().sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="need floating-point images"):
        augment_batch(
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8), AugmentConfig(brightness=0.1), torch.Generator()
        )


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


# --------------------------------------------------------------------------------------
# Partial labels: a few labelled crops among unlabelled ones supervise Q with no setting


def test_partial_labels_supervise_q_without_any_setting(tmp_path):
    """2 labelled crops in 3 (the rest unlabelled): the default config trains semi-supervised and
    names the categories from the labels; with partial_labels off, or a fully labelled store, not."""
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    config = tiny_config(
        latent=LatentSpec(z_dim=4, categorical=[3], n_continuous=1), total_images=16, partial_labels=True
    )
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    _, _, meta = load_generator(run)
    assert meta["category_labels"] == ["apple", "zebra"]
    assert "Loss/Q/sup" in json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    off = train(
        store, tmp_path / "off", tiny_config(latent=config.latent, total_images=16), seed=0, device="cpu"
    )
    assert load_generator(off)[2]["category_labels"] == []
    full = make_store(tmp_path / "full.h5", labels=("zebra", "apple"))
    with h5py.File(full, "r+") as f:  # label every crop
        del f["obs/label"]
        f["obs"].create_dataset(
            "label", data=np.array(["zebra", "apple"] * 12, dtype=object), dtype=h5py.string_dtype("utf-8")
        )
    run_full = train(full, tmp_path / "full", config, seed=0, device="cpu")
    assert load_generator(run_full)[2]["category_labels"] == []


def test_partial_labels_with_more_classes_than_categories_name_the_keys(tmp_path):
    store = make_store(tmp_path / "crops.h5", labels=("zebra", "apple"))
    config = tiny_config(latent=LatentSpec(z_dim=4, categorical=[1], n_continuous=1), partial_labels=True)
    with pytest.raises(ConfigError, match=r"train\.latent\.categorical.*train\.partial_labels"):
        train(store, tmp_path / "run", config, seed=0, device="cpu")
