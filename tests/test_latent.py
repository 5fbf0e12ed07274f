"""Latent sampling: shapes, ranges and priors of the codes, the generator's input layout, and a
seed's sample being the same in any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infogan_cells.config import LatentSpec
from infogan_cells.model.latent import (
    Latent,
    latent_grid,
    sample_latent,
    sample_latent_by_seed,
    seed_uniforms,
    to_input,
)

SPEC = LatentSpec(z_dim=3, categorical=[4, 2], n_continuous=2, continuous_range=1.5)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sample_shapes_dtypes_and_ranges():
    lat = sample_latent(SPEC, 4000, generator=_gen())
    assert len(lat) == 4000
    assert lat.z.shape == (4000, 3) and lat.z.dtype == torch.float32
    assert lat.cat.shape == (4000, 2) and lat.cat.dtype == torch.int64
    assert lat.cont.shape == (4000, 2)
    # z ~ N(0, 1)
    assert abs(lat.z.mean().item()) < 0.05 and lat.z.std().item() == pytest.approx(1.0, abs=0.05)
    # every category of each code, uniformly; nothing outside
    for j, k in enumerate(SPEC.categorical):
        counts = torch.bincount(lat.cat[:, j], minlength=k)
        assert len(counts) == k and counts.min() > 4000 / k * 0.85
    # c ~ U(-r, r): both ends reached, none beyond, mean 0
    assert lat.cont.min() >= -1.5 and lat.cont.max() <= 1.5
    assert lat.cont.min() < -1.45 and lat.cont.max() > 1.45
    assert abs(lat.cont.mean().item()) < 0.05


def test_sampling_is_seeded_by_its_generator():
    a = sample_latent(SPEC, 8, generator=_gen(1))
    b = sample_latent(SPEC, 8, generator=_gen(1))
    c = sample_latent(SPEC, 8, generator=_gen(2))
    assert torch.equal(a.z, b.z) and torch.equal(a.cat, b.cat) and torch.equal(a.cont, b.cont)
    assert not torch.equal(a.z, c.z)


def test_sampling_leaves_the_global_rng_alone_and_a_prior_is_seeded_too():
    probs = [torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.tensor([0.5, 0.5])]
    state = torch.random.get_rng_state()
    a = sample_latent(SPEC, 64, generator=_gen(5), cat_probs=probs)
    grid = latent_grid(SPEC, n_steps=3, generator=_gen(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = sample_latent(SPEC, 64, generator=_gen(5), cat_probs=probs)
    assert torch.equal(a.cat, b.cat) and torch.equal(a.z, b.z)
    assert torch.equal(grid.z, latent_grid(SPEC, n_steps=3, generator=_gen(5)).z)
    assert not torch.equal(grid.z, latent_grid(SPEC, n_steps=3, generator=_gen(6)).z)


def test_categorical_prior_is_followed():
    probs = [torch.tensor([0.7, 0.1, 0.1, 0.1]), torch.tensor([0.0, 1.0])]
    lat = sample_latent(SPEC, 4000, generator=_gen(), cat_probs=probs)
    share = torch.bincount(lat.cat[:, 0], minlength=4).float() / 4000
    assert share[0].item() == pytest.approx(0.7, abs=0.03)
    assert torch.all(lat.cat[:, 1] == 1)
    # an unnormalised prior is normalised; None leaves a code uniform
    lat = sample_latent(SPEC, 4000, generator=_gen(), cat_probs=[torch.tensor([3.0, 1.0, 0.0, 0.0]), None])
    share = torch.bincount(lat.cat[:, 0], minlength=4).float() / 4000
    assert share[0].item() == pytest.approx(0.75, abs=0.03) and share[2:].sum() == 0
    assert torch.bincount(lat.cat[:, 1], minlength=2).min() > 1800


def test_truncation_scales_z_only():
    a = sample_latent(SPEC, 16, generator=_gen(3))
    b = sample_latent(SPEC, 16, generator=_gen(3), truncation=0.5)
    torch.testing.assert_close(b.z, 0.5 * a.z)
    assert torch.equal(a.cat, b.cat) and torch.equal(a.cont, b.cont)


def test_to_input_layout():
    lat = Latent(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[2, 1]]), torch.tensor([[-0.5, 0.7]]))
    x = to_input(SPEC, lat)
    assert x.shape == (1, SPEC.input_dim) == (1, 3 + 4 + 2 + 2)
    torch.testing.assert_close(x[0], torch.tensor([0.1, 0.2, 0.3, 0, 0, 1, 0, 0, 1, -0.5, 0.7]))


def test_a_seed_gives_the_same_sample_in_any_batch():
    together = sample_latent_by_seed(SPEC, [5, 9, 11])
    alone = sample_latent_by_seed(SPEC, [9])
    assert torch.equal(together.z[1:2], alone.z) and torch.equal(together.cat[1:2], alone.cat)
    assert torch.equal(together.cont[1:2], alone.cont)
    # and it is the seed's counter-based stream: Box-Muller on its first numbers, then the codes
    u = seed_uniforms(np.array([9]), 4 + 2 + 2)[0]
    z = np.sqrt(-2 * np.log(u[0:4:2]))[:, None] * np.stack(
        [np.cos(2 * np.pi * u[1:4:2]), np.sin(2 * np.pi * u[1:4:2])], 1
    )
    np.testing.assert_allclose(alone.z[0].numpy(), z.ravel()[:3], rtol=1e-6)
    assert alone.cat[0].tolist() == [int(u[4] * 4), int(u[5] * 2)]
    np.testing.assert_allclose(alone.cont[0].numpy(), (u[6:8] * 2 - 1) * SPEC.continuous_range, rtol=1e-6)
    assert not torch.equal(together.z[0], together.z[1])
    empty = sample_latent_by_seed(SPEC, [])
    assert empty.z.shape == (0, 3) and empty.cat.shape == (0, 2) and empty.cont.shape == (0, 2)
    assert empty.cat.dtype == torch.int64


def test_seeded_samples_follow_the_prior_and_truncation():
    probs = [torch.tensor([0.0, 0.0, 1.0, 0.0]), None]
    lat = sample_latent_by_seed(SPEC, range(20), cat_probs=probs, truncation=0.0)
    assert torch.all(lat.cat[:, 0] == 2) and torch.all(lat.z == 0)


def test_latent_grid_rows_are_categories_and_columns_sweep_one_code():
    grid = latent_grid(SPEC, n_steps=5, code=1, generator=_gen())
    assert len(grid) == 4 * 5
    assert grid.z.shape == (20, 3) and grid.cat.shape == (20, 2) and grid.cont.shape == (20, 2)
    assert grid.cat.dtype == torch.int64 and grid.cont.dtype == torch.float32
    cat = grid.cat.reshape(4, 5, 2)
    assert torch.equal(cat[:, :, 0], torch.arange(4)[:, None].expand(4, 5))
    assert torch.all(cat[:, :, 1] == 0)
    cont = grid.cont.reshape(4, 5, 2)
    torch.testing.assert_close(cont[0, :, 1], torch.linspace(-1.5, 1.5, 5))
    assert torch.all(cont[:, :, 0] == 0)
    z = grid.z.reshape(4, 5, 3)
    assert torch.equal(z[:, :1].expand(4, 5, 3), z)  # one z per row
    assert not torch.equal(z[0, 0], z[1, 0])
    # the code index wraps around
    wrapped = latent_grid(SPEC, n_steps=5, code=3, generator=_gen())
    torch.testing.assert_close(wrapped.cont, grid.cont)


def test_latent_to_device_keeps_values():
    lat = sample_latent(SPEC, 4, generator=_gen(), device="cpu")
    moved = lat.to("cpu")
    assert torch.equal(moved.z, lat.z) and torch.equal(moved.cat, lat.cat)


def test_a_spec_without_categorical_codes():
    spec = LatentSpec(z_dim=2, categorical=[], n_continuous=1)
    lat = sample_latent(spec, 5, generator=_gen())
    assert lat.cat.shape == (5, 0) and lat.cat.dtype == torch.int64
    assert to_input(spec, lat).shape == (5, 3)


def test_latent_grid_without_categorical_codes():
    """A run with continuous codes only gets its sample sheets (the empty categorical block once
    crashed the reshape)."""
    spec = LatentSpec(z_dim=2, categorical=[], n_continuous=1)
    grid = latent_grid(spec, n_steps=3, generator=_gen())
    assert len(grid) == 3 and grid.cat.shape == (3, 0)
