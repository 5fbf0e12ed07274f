"""Positives of the pair term from nearest neighbours (``train.pair_neighbours``, SCAN): the search,
its cap on candidates, the batches that carry each real crop's neighbour, and the refusal."""

from __future__ import annotations

import pytest
import torch

from infogan_cells.config import load_config
from infogan_cells.errors import ConfigError
from infogan_cells.training import neighbours as nb_mod
from infogan_cells.training.data import Batches, Crops
from infogan_cells.training.neighbours import feature_neighbours, nearest_neighbours


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
    monkeypatch.setattr(nb_mod, "NEIGHBOUR_POOL", 20)
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


def test_neighbours_without_the_pair_term_are_unused_and_bad_counts_refused():
    """Turning the IIC term off (lambda_pair_mi 0) needs no other change: no neighbours are searched."""
    images, _ = _two_kinds()
    cfg = load_config(
        None, [{"train": {"pair_neighbours": 5, "pair_neighbours_refresh": 0.5, "lambda_pair_mi": 0}}]
    )
    batches = Batches(Crops(images, None, ["grey"], []), cfg.train, torch.Generator(), torch.Generator())
    assert batches.neighbours is None and batches.real()[2] is None
    with pytest.raises(ConfigError, match=r"train\.pair_neighbours"):
        load_config(None, [{"train": {"pair_neighbours": -1}}])


def _bright_or_dim(n: int = 40, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two kinds that differ only in brightness (the same random textures, dim or bright): pixel
    neighbours, compared after each crop's own mean is taken away, cannot tell them apart."""
    g = torch.Generator().manual_seed(3)
    kind = torch.arange(n) % 2
    texture = torch.randint(0, 40, (n // 2, 1, size, size), generator=g).repeat_interleave(2, 0)
    return (texture + 20 + 150 * kind[:, None, None, None]).to(torch.uint8), kind


class _MeanTrunk(torch.nn.Module):
    """A stand-in for D: its trunk's features are each crop's mean (and a BatchNorm to be kept)."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(1)
        self.trunk = torch.nn.Sequential(self.bn, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def test_neighbours_from_features_see_what_pixels_miss_and_leave_d_alone():
    images, kind = _bright_or_dim()
    pixels = nearest_neighbours(images, 1)
    assert (kind[pixels[:, 0]] == kind).float().mean() < 0.25  # same texture, other kind: nearest in pixels
    D = _MeanTrunk().train()
    before = {k: v.clone() for k, v in D.state_dict().items()}
    feats = feature_neighbours(D, images, 5, batch_size=16)
    assert feats.shape == (40, 5) and (feats != torch.arange(40)[:, None]).all()
    assert (kind[feats] == kind[:, None]).all()
    assert D.training and all(torch.equal(before[k], v) for k, v in D.state_dict().items())


def test_refresh_takes_a_fraction_below_one():
    assert (
        load_config(None, [{"train": {"pair_neighbours_refresh": 0.25}}]).train.pair_neighbours == 0
    )  # unused
    with pytest.raises(ConfigError, match=r"train\.pair_neighbours_refresh"):
        load_config(None, [{"train": {"pair_neighbours": 5, "pair_neighbours_refresh": 1.0}}])


def test_neighbours_from_features_start_with_two_views_and_need_a_refresh():
    images, _ = _two_kinds()
    cfg = load_config(
        None,
        [
            {
                "train": {
                    "pair_neighbours": 3,
                    "pair_neighbours_from": "features",
                    "pair_neighbours_refresh": 0.5,
                }
            }
        ],
    ).train
    batches = Batches(Crops(images, None, ["grey"], []), cfg, torch.Generator(), torch.Generator())
    assert batches.neighbours is None and batches.real()[2] is None  # two views of one crop until mined
    batches.refresh_neighbours(_MeanTrunk(), images_seen=128)
    assert batches.neighbours.shape == (40, 3) and batches.real()[2] is not None
    with pytest.raises(ConfigError, match=r"train\.pair_neighbours_from.*pair_neighbours_refresh"):
        load_config(None, [{"train": {"pair_neighbours": 3, "pair_neighbours_from": "features"}}])
