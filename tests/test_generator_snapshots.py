"""An ensemble of one run's generators (``train.generator_snapshots``): where training keeps
them, how a batch is shared among them, and that synthesis draws sample ``k`` from generator
``(k % micro_batch) % n``, reproducibly in any batch or shard."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from synth_runs import CONFIG, assert_same, make_run, read_all
from tiny_train import make_store, tiny_config

from infogan_cells.model.augment import to_uint8
from infogan_cells.model.checkpoint import load_generator
from infogan_cells.model.latent import to_input
from infogan_cells.model.networks import Generator, GeneratorEnsemble
from infogan_cells.synthesis.gather import gather
from infogan_cells.synthesis.generate import sample_latents
from infogan_cells.synthesis.plan import make_plan
from infogan_cells.synthesis.synthesise import synthesise
from infogan_cells.training.loop import train
from infogan_cells.training.rundir import snapshot_points

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("ensemble"), snapshots=2)


def test_snapshot_points_share_out_the_second_half():
    assert snapshot_points(61440, 4) == [30720, 40960, 51200]
    assert snapshot_points(100, 2) == [50]
    assert snapshot_points(100, 1) == []


def test_training_keeps_the_ema_generator_at_each_point(tmp_path):
    store = make_store(tmp_path / "crops.h5")
    run = train(
        store, tmp_path / "run", tiny_config(total_images=96, generator_snapshots=3), seed=0, device="cpu"
    )
    payload = torch.load(run / "network-final.pt", weights_only=True)
    kept = [e["state_dict"] for e in payload["generator_snapshots"]]
    final = payload["generator_ema"]["state_dict"]
    assert len(kept) == 2  # at 48 and 72 images; the final one is the third
    for a, b in [(kept[0], kept[1]), (kept[1], final)]:
        assert any(not torch.equal(a[k], b[k]) for k in final), "a kept generator is a copy of a later one"
    one, _, _ = load_generator(run)
    assert isinstance(one, Generator)  # traversals and the explorer: the final generator alone
    G, _, _ = load_generator(run, snapshots=True)
    assert isinstance(G, GeneratorEnsemble) and len(G.members) == 3
    for k in final:
        assert torch.equal(G.members[2].state_dict()[k], final[k])
        assert torch.equal(G.members[0].state_dict()[k], kept[0][k])
    # points crowded into few steps (12, 14, 16 in one, 19 and 21 in the last): still one copy each
    crowded = train(
        store, tmp_path / "crowded", tiny_config(total_images=24, generator_snapshots=6), seed=0, device="cpu"
    )
    assert len(load_generator(crowded, snapshots=True)[0].members) == 6
    without = train(store, tmp_path / "single", tiny_config(total_images=96), seed=0, device="cpu")
    assert "generator_snapshots" not in torch.load(without / "network-final.pt", weights_only=True)
    assert isinstance(load_generator(without, snapshots=True)[0], Generator)


def test_an_ensemble_draws_row_r_with_member_r_mod_n(ensemble_run):
    G, spec, _ = load_generator(ensemble_run, snapshots=True)
    x = torch.randn(11, spec.input_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = G(x)
        for m, member in enumerate(G.members):
            assert torch.equal(out[m::3], member(x[m::3]))
        assert not torch.allclose(G.members[0](x), G.members[2](x))  # the members draw other cells
        assert G(x[:2]).shape == (2, *out.shape[1:])  # fewer rows than members


def test_synthesis_draws_sample_k_from_generator_k_mod_micro_batch_mod_n(ensemble_run, tmp_path):
    whole = synthesise(ensemble_run, tmp_path / "whole.h5", CONFIG)
    data = read_all(whole)
    G, spec, meta = load_generator(ensemble_run, snapshots=True)
    plan = make_plan(spec, meta, CONFIG, per_category=False, category_map=None)
    index = np.arange(CONFIG.n)
    x = to_input(spec, sample_latents(spec, plan, CONFIG, index))
    member = (index % CONFIG.micro_batch) % 3
    with torch.no_grad():
        for m in range(3):
            rows = np.flatnonzero(member == m)
            stored = data["images"][rows].astype(int)
            own = to_uint8(G.members[m](x[rows])).permute(0, 2, 3, 1).numpy().astype(int)
            # each sample against its own member; a pixel may differ by one level (batch shape)
            assert np.abs(own - stored).max() <= 1
            other = to_uint8(G.members[(m + 1) % 3](x[rows])).permute(0, 2, 3, 1).numpy().astype(int)
            assert np.abs(other - stored).mean() > 5
    with h5py.File(whole, "r") as f:
        assert f.attrs["generators"] == 3
    shards = [synthesise(ensemble_run, tmp_path / f"s{i}.h5", CONFIG, shard=(i, 3)) for i in range(3)]
    assert_same(read_all(gather(shards, tmp_path / "joined.h5")), data)
    odd = synthesise(ensemble_run, tmp_path / "odd.h5", dataclasses.replace(CONFIG, batch_size=5))
    assert_same(read_all(odd), data)
