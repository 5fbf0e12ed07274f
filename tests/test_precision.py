"""Mixed precision, host syncs and memory of the training loop: the CUDA paths, run on the CPU.

bf16 autocast runs on the CPU as on CUDA (``train.precision: bf16``), so the dtype plumbing a
GPU run depends on is exercised by every test run; what only a GPU can show (host syncs
reported by CUDA itself) sits behind the ``gpu`` marker.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import infogan_cells.training.step as step_mod
from infogan_cells.cli import main as cli_main
from infogan_cells.config import LatentSpec, TrainConfig, load_config
from infogan_cells.data.store import write_crop_store
from infogan_cells.errors import ConfigError
from infogan_cells.model.checkpoint import resolve_precision
from infogan_cells.model.latent import sample_latent
from infogan_cells.training.data import Batches, load_crops
from infogan_cells.training.loop import train
from infogan_cells.training.parts import advance, build_parts
from infogan_cells.training.step import InfoGANStep, build_networks, build_optimizers
from infogan_cells.training.syncs import HostSyncCounter

PRESETS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


def random_store(
    path: Path, n: int = 32, size: int = 32, channels: int = 3, labels=("a", "b"), names=None
) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    obs = pd.DataFrame(
        {
            "source_image": "random",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": size,
            "max_col": size,
            "label": [labels[i % len(labels)] for i in range(n)],
            "qc_pass": True,
            "qc_reason": "",
        }
    )
    write_crop_store(path, images, obs, names or [f"ch{i}" for i in range(channels)], csv=False)
    return path


def preset_train_config(name: str, **kw) -> TrainConfig:
    """A preset's training section, cut to two steps of a small batch (every loss term it turns on stays on)."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / name).train
    b = 16
    base = dict(
        batch_size=b,
        total_images=2 * b,
        tick_images=b,
        snapshot_images=2 * b,
        checkpoint_images=b,
        supervised_batch=8,
    )
    if cfg.supervised_fraction == 0:  # semi-supervision on too: a preset may turn it on with a key
        base["supervised_fraction"] = 0.25
    base.update(kw)
    return dataclasses.replace(cfg, **base)


# --------------------------------------------------------------------------------------
# precision


def test_precision_resolves_per_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"  # bf16 on a CPU is correct but slower: only on request
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("bf16", torch.device("mps"))  # MPS autocast has no bf16 here: refused by key
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp16", cpu)


def test_precision_is_a_config_key_with_choices():
    assert TrainConfig().precision == "auto"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, [{"train": {"precision": "half"}}])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_in_either_precision(tmp_path, preset, precision):
    channels = 1 if "digits" in preset else 3
    # the channel names of each preset's data: hand_features name channels, and a preset naming
    # one the crops lack is refused (test_recipe_options.py)
    names = {
        "ifc_npz.yaml": ["Ch3_brightfield", "Ch4_DNA_stain", "Ch6_darkfield"],
        "nih_cells.yaml": ["R", "G", "B"],
    }.get(preset)
    store = random_store(tmp_path / "crops.h5", channels=channels, names=names)
    config = preset_train_config(preset, precision=precision)
    run = train(store, tmp_path / "run", config, seed=0, device="cpu")
    recs = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in recs] == [16, 32]
    losses = {k: v for r in recs for k, v in r.items() if k.startswith(("Loss/", "MI/"))}
    assert losses and all(np.isfinite(v) for v in losses.values()), losses
    meta = torch.load(run / "network-final.pt", weights_only=True)["meta"]
    assert meta["precision"] == precision and meta["bf16"] == (precision == "bf16")


def test_bf16_changes_the_arithmetic_and_keeps_losses_q_and_augmentation_in_fp32(tmp_path, monkeypatch):
    """Under bf16 the convolutions run in bf16 (the losses differ from fp32), while every loss term,
    Q's last layer and every image entering DiffAugment stay fp32."""
    config = preset_train_config("config.yaml")
    spec = config.latent
    seen: dict[str, set] = {"augment_in": set(), "q_last_in": set(), "q_last_out": set(), "trunk_out": set()}
    augment = step_mod.augment_batch

    def recording_augment(x, cfg, generator):
        seen["augment_in"].add(x.dtype)
        return augment(x, cfg, generator)

    monkeypatch.setattr(step_mod, "augment_batch", recording_augment)

    def run_step(precision: str) -> dict[str, torch.Tensor]:
        G, D = build_networks(spec, 32, 3, config, torch.Generator().manual_seed(0))

        def record(key_in, key_out):
            def hook(module, inputs, output):  # returns None: the output is left as it is
                if key_in:
                    seen[key_in].add(inputs[0].dtype)
                seen[key_out].add(output.dtype)

            return hook

        D.q_net[-1].register_forward_hook(record("q_last_in", "q_last_out"))
        D.trunk.register_forward_hook(record(None, "trunk_out"))
        cfg = dataclasses.replace(config, precision=precision)
        opt_G, opt_D = build_optimizers(G, D, cfg, torch.device("cpu"))
        step = InfoGANStep(G, D, opt_G, opt_D, spec, cfg, torch.device("cpu"))
        real = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        latent = sample_latent(spec, 16, generator=torch.Generator().manual_seed(2))
        terms, _ = step(real, latent, generator=torch.Generator().manual_seed(3))
        return terms

    fp32 = run_step("fp32")
    assert seen["trunk_out"] == {torch.float32}
    bf16 = run_step("bf16")
    assert torch.bfloat16 in seen["trunk_out"]  # autocast did run the trunk in bf16
    assert seen["augment_in"] == {torch.float32}  # G's output is cast back before augmentation
    assert seen["q_last_in"] == {torch.float32} and seen["q_last_out"] == {torch.float32}
    assert all(v.dtype == torch.float32 for v in bf16.values())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)


def test_q_head_accepts_bf16_features_outside_autocast():
    """The crash of the first GPU run: Q's head given bf16 trunk features with no autocast active."""
    _, D = build_networks(
        LatentSpec(z_dim=4, categorical=[3], n_continuous=2),
        16,
        1,
        TrainConfig(),
        torch.Generator().manual_seed(0),
    )
    h = D.trunk(torch.zeros(4, 1, 16, 16)).to(torch.bfloat16)
    q = D.q_head(h)
    assert q.cat_logits[0].dtype == torch.float32 and q.cont_mu.shape == (4, 2)


def test_cuda_without_cuda_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    store = random_store(tmp_path / "crops.h5")
    code = cli_main(["train", "--crops", str(store), "--out", str(tmp_path / "run"), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "CUDA is not available" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------
# host syncs


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"prior": "learned", "prior_warmup": 0.0},
        {"supervised_fraction": 0.5},
        {"supervised_fraction": 0.5, "conditional_d": True, "lambda_mode_seeking": 0.2},
    ],
    ids=["default", "learned-prior", "semi-supervised", "conditional-mode-seeking"],
)
def test_a_training_step_makes_no_host_sync(tmp_path, extra):
    """A run of 8 steps and one of 4 (one tick, one snapshot, no checkpoint each) make the same
    syncing calls: the steps themselves make none, only the tick, snapshot and final save do."""
    store = random_store(tmp_path / "crops.h5", size=16)
    counts = []
    for steps in (4, 8):
        config = preset_train_config(
            "config.yaml",
            total_images=16 * steps,
            tick_images=10**6,
            snapshot_images=10**6,
            checkpoint_images=10**6,
            g_channels=4,
            d_channels=4,
            **{"supervised_fraction": 0.0, **extra},
        )
        with HostSyncCounter() as counter:
            train(store, tmp_path / f"run{steps}", config, seed=0, device="cpu")
        counts.append(counter.calls)
    assert counts[0] == counts[1]


@pytest.mark.gpu
def test_a_training_step_makes_no_host_sync_on_cuda(tmp_path):
    """CUDA's own sync detector, set to raise, around steps after the first (warm-up) one."""
    dev = torch.device("cuda")
    config = preset_train_config("config.yaml", prior="learned", prior_warmup=0.0)
    store = random_store(tmp_path / "crops.h5")
    crops = load_crops(store, config, dev, torch.Generator().manual_seed(0))
    parts = build_parts(config, 32, 3, dev, torch.Generator().manual_seed(0))  # channels_last, as train()
    gen = torch.Generator(device=dev).manual_seed(0)
    batches = Batches(crops, config, gen, torch.Generator(device=dev).manual_seed(1))
    prior = [torch.full((k,), 1.0 / k, device=dev) for k in config.latent.categorical]
    for i in range(3):
        if i == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            advance(parts, batches, prior, config, n_steps=i, learned=True, generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode(0)


# --------------------------------------------------------------------------------------
# memory


def test_loading_crops_costs_about_their_own_size_in_host_memory(tmp_path):
    """200 MB of crops: the loader's peak resident memory grows by at most 1.2x the crops plus
    one read block, where reading, selecting and transposing whole arrays took 3x."""
    n, size, channels = 16_000, 64, 3
    nbytes = n * size * size * channels
    store = tmp_path / "crops.h5"
    images = np.zeros((n, size, size, channels), np.uint8)
    images[:, ::7] = 255
    obs = pd.DataFrame(
        {
            "source_image": "x",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": size,
            "max_col": size,
            "label": "",
            "qc_reason": "",
            "qc_pass": np.arange(n) % 50 != 0,
        }
    )
    write_crop_store(store, images, obs, ["r", "g", "b"], csv=False, compression=None)
    del images
    code = textwrap.dedent(f"""
        import resource, sys, json, torch
        from infogan_cells.config import TrainConfig
        from infogan_cells.training.data import load_crops, LOAD_BLOCK_BYTES
        from infogan_cells.data.store import read_crop_store
        read_crop_store({str(store)!r}, load_images=False)  # warm up the imports and the obs reader
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        crops = load_crops({str(store)!r}, TrainConfig(), torch.device("cpu"), torch.Generator())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"grew": after - before, "block": LOAD_BLOCK_BYTES, "n": crops.images.shape[0],
                          "sum": int(crops.images[:, 0, 0].sum())}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    kept = n - len(range(0, n, 50))
    assert result["n"] == kept and result["sum"] == kept * 255 * size  # row 0 of every kept crop is white
    assert result["grew"] <= 1.2 * kept * size * size * channels + 2 * result["block"], (result, nbytes)


def test_the_sync_counter_sees_reads_copies_and_data_dependent_shapes():
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        x.sum().item()
        x.to("cpu")
        bool(x.any())
        torch.nonzero(x)
        x + 1  # no sync
    assert counter.calls == {"item": 1, "to": 1, "__bool__": 1, "nonzero": 1}


def test_crops_larger_than_the_free_memory_are_refused_before_reading(tmp_path, monkeypatch, capsys):
    """Size needed and size free in one line, before any crop is read or any output written
    (the free memory is made small here; a real device reports its own through free_memory)."""
    import infogan_cells.training.data as data_mod

    assert data_mod.free_memory(torch.device("cpu")) > 0  # /proc/meminfo's MemAvailable here
    store = random_store(tmp_path / "crops.h5", n=32)  # 32 x 3 x 32 x 32 bytes = 96 KiB
    monkeypatch.setattr(data_mod, "free_memory", lambda device: 20 * 1024)
    code = cli_main(["train", "--crops", str(store), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "need 0.1 MiB on cpu" in err[0] and "only 0.0 MiB is free" in err[0] and str(store) in err[0]
    assert not (tmp_path / "run" / "network-final.pt").exists()
