"""Positives of the pair term from nearest neighbours (``train.pair_neighbours``, SCAN): the search,
its cap on candidates, the batches that carry each real crop's neighbour, and the refusal."""

from __future__ import annotations

import pytest
import torch

from infogan_cells.config import load_config
from infogan_cells.errors import ConfigError
from infogan_cells.training import data as data_mod
from infogan_cells.training.data import Batches, Crops, nearest_neighbours


def _two_kinds(n: int = 40, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops (N, 1, H, W) uint8 of two kinds, a bright left half or a bright right half, with noise;
    and each crop's kind."""
    g = torch.Generator().manual_seed(0)
    kind = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 1, size, size), generator=g)
    x[kind == 0, :, :, : size // 2] += 150
    x[kind == 1, :, :, size // 2 :] += 150
    return x.to(torch.uint8), kind


def test_neighbours_share_the_kind_and_are_never_the_crop_itself():
    images, kind = _two_kinds()
    nn = nearest_neighbours(images, 5)
    assert nn.shape == (40, 5) and nn.dtype == torch.int64
    assert (nn != torch.arange(40)[:, None]).all()
    assert (kind[nn] == kind[:, None]).all()
    # nearest first: similarity falls along each row
    f = torch.nn.functional.adaptive_avg_pool2d(images.float(), 16).flatten(1)
    f = f - f.mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True)
    sim = (f[:, None, :] * f[nn]).sum(-1)
    assert (sim[:, :-1] >= sim[:, 1:] - 1e-6).all()


def test_a_large_set_searches_a_capped_pool_and_k_is_capped_by_the_set(monkeypatch):
    images, kind = _two_kinds(60)
    monkeypatch.setattr(data_mod, "NEIGHBOUR_POOL", 20)
    nn = nearest_neighbours(images, 3, torch.Generator().manual_seed(1), chunk=7)
    assert len(torch.unique(nn)) <= 20  # every neighbour comes from the 20 candidates
    assert (nn != torch.arange(60)[:, None]).all() and (kind[nn] == kind[:, None]).all()
    assert nearest_neighbours(images[:3], 5).shape == (3, 2)
    with pytest.raises(ValueError, match="at least 2 crops"):
        nearest_neighbours(images[:1], 5)


def test_batches_carry_each_real_crops_neighbour():
    images, kind = _two_kinds()
    # each crop's kind is written in its top-left pixel, so the partner's kind can be read back
    images[:, 0, 0, 0] = kind.to(torch.uint8) * 255
    still = {"rot90": False, "flip": False, "shift": 0}  # the marked pixel stays where it is
    cfg = load_config(None, [{"train": {"pair_neighbours": 3, "batch_size": 16, "augment": still}}]).train
    crops = Crops(images, None, ["grey"], [])
    g = torch.Generator().manual_seed(0)
    real, supervised, partner = Batches(crops, cfg, g, torch.Generator().manual_seed(1)).real()
    assert supervised is None and partner.shape == real.shape == (16, 1, 16, 16)
    assert (real[:, 0, 0, 0] == partner[:, 0, 0, 0]).all()  # same kind
    assert not torch.equal(real, partner)  # another crop, not the same one again
    off = load_config(None, []).train
    assert off.pair_neighbours == 0
    assert Batches(crops, off, g, torch.Generator().manual_seed(1)).real()[2] is None


def test_neighbours_without_the_pair_term_are_refused():
    with pytest.raises(ConfigError, match=r"train\.pair_neighbours.*lambda_pair_mi"):
        load_config(None, [{"train": {"pair_neighbours": 5, "lambda_pair_mi": 0}}])
    with pytest.raises(ConfigError, match=r"train\.pair_neighbours"):
        load_config(None, [{"train": {"pair_neighbours": -1}}])
