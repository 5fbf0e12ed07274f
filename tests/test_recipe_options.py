"""The options the presets' recipes for finding cell kinds use: hand-chosen, label-free numbers
given to D's and Q's heads (``train.hand_features``), the median fill of a crop's surround
(``crop.mask_fill: median``); the per-channel tint jitter (``augment.tint``) is in test_augment.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from infogan_cells.config import load_config
from infogan_cells.data.store import write_crop_store
from infogan_cells.errors import ConfigError
from infogan_cells.model.networks import Discriminator, HandStats, _quantiles
from infogan_cells.preprocess.windows import mask_background
from infogan_cells.training.step import build_networks

SPEC = {"z_dim": 4, "categorical": [3], "n_continuous": 1, "continuous_range": 1.0}


def _stats(**kw) -> HandStats:
    s = HandStats(64, channels=kw.pop("channels", [0, 1, 2]), **kw)
    return s.eval()  # running statistics (0, 1): the raw numbers, times the gain


def _cells(n: int = 4, size: int = 32) -> torch.Tensor:
    x = torch.full((n, 3, size, size), 0.2)
    return x + 0.01 * torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_shape_and_order():
    s = _stats(quantiles=[0.02, 0.5], mean=True)
    out = s(_cells())
    assert s.n_out == 3 * 3 and out.shape == (4, 9)
    heavier = _stats(quantiles=[0.02, 0.5], mean=True, weight=2.0)
    assert torch.allclose(heavier(_cells()), 2 * out)  # weight scales what the heads see


def test_a_dark_spot_in_the_centre_moves_the_low_quantile_not_one_outside_the_window():
    s = _stats(quantiles=[0.02], centre=0.5, relative=False)  # relative: the spot moves the median a little
    x = _cells(2)
    base = s(x)
    inside, outside = x.clone(), x.clone()
    inside[:, :, 14:18, 14:18] = -0.9  # 16 px in the 16x16 centre window (6%)
    outside[:, :, 1:5, 1:5] = -0.9  # the same spot in a corner
    assert (s(inside) < base - 1).all()
    assert torch.allclose(s(outside), base, atol=1e-3)


def test_relative_quantiles_ignore_a_tint_of_the_whole_image():
    x = _cells(2)
    tint = torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    rel, absolute = _stats(quantiles=[0.1, 0.5]), _stats(quantiles=[0.1, 0.5], relative=False)
    assert torch.allclose(rel(x + tint), rel(x), atol=1e-4)
    assert not torch.allclose(absolute(x + tint), absolute(x), atol=1e-2)


def test_mean_reads_only_the_chosen_channel():
    s = _stats(mean=True, channels=[1])
    x = _cells(2)
    y = x.clone()
    y[:, 0] += 0.5  # another channel: no change
    assert torch.allclose(s(y), s(x))
    y[:, 1] += 0.5
    assert (s(y) > s(x)).all()
    logged = _stats(mean=True, log=True, channels=[1])
    double = x.clone()
    double[:, 1] = (x[:, 1] + 1) * 2 - 1  # twice the intensity in [0, 1]
    assert torch.allclose(
        logged(double) - logged(x), torch.full((2, 1), math.log(2) * logged.gain), atol=0.01
    )


def test_gradients_reach_the_pixels_that_set_the_quantile():
    """G is trained through these numbers: the pixel at the low quantile must get a gradient."""
    s = HandStats(64, channels=[0], quantiles=[0.0], relative=False).eval()
    x = _cells(8).requires_grad_(True)
    with torch.no_grad():
        x[:, 0, 16, 16] = -1.0
    s(x).pow(2).sum().backward()
    g = x.grad[:, 0]
    assert (g[:, 16, 16].abs() > 0).all()
    assert g.abs().sum() == g[:, 16, 16].abs().sum()  # the minimum alone


def test_discriminator_rebuilds_from_its_kwargs_and_old_keys_stay():
    hand = {
        "quantiles": [0.05, 0.5],
        "mean": True,
        "log": True,
        "centre": 0.5,
        "relative": True,
        "channels": [0, 2],
    }
    D = Discriminator(SPEC, img_size=32, channels=3, width=8, hand_features=hand).eval()
    D2 = Discriminator(**D.kwargs).eval()
    D2.load_state_dict(D.state_dict())
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.equal(D(x)[0], D2(x)[0])
    assert torch.equal(D(x)[1].cat_logits[0], D2(x)[1].cat_logits[0])
    plain = Discriminator(SPEC, img_size=32, channels=3, width=8)
    keys, with_stats = set(plain.state_dict()), set(D.state_dict())
    # the convolutions keep their names; only the heads' widths and the stats' norm are new
    assert {k for k in keys if k.startswith("trunk.")} <= with_stats
    assert {k for k in with_stats - keys} == {
        "trunk.stats.norm.running_mean",
        "trunk.stats.norm.running_var",
        "trunk.stats.norm.num_batches_tracked",
    }
    assert D.q_net[1].in_features == plain.q_net[1].in_features + 2 * 3


def test_config_refuses_bad_quantiles_and_names():
    with pytest.raises(ConfigError, match=r"train\.hand_features\.quantiles"):
        load_config(None, [{"train": {"hand_features": {"quantiles": [0.1, 1.5]}}}])
    with pytest.raises(ConfigError, match=r"train\.hand_features\.log': takes the log of the mean"):
        load_config(None, [{"train": {"hand_features": {"log": True}}}])
    with pytest.raises(ConfigError, match=r"train\.hand_features\.centre"):
        load_config(None, [{"train": {"hand_features": {"centre": 0}}}])
    cfg = load_config(None, [{"train": {"hand_features": {"mean": True, "channels": ["DNA"]}}}])
    with pytest.raises(
        ConfigError, match=r"'train\.hand_features\.channels': DNA not among .*red, green, blue"
    ):
        build_networks(cfg.train.latent, 32, 3, cfg.train, torch.Generator(), ["red", "green", "blue"])


def test_dna_channel_option_on_rgb_crops_is_refused_before_training(tmp_path):
    """The CLI: one line naming the key and the channels the crops have; no run directory."""
    images = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    obs = {"source_image": ["a.png"] * 8, "source_index": list(range(8)), "label": [""] * 8}
    obs = pd.DataFrame(
        {
            **obs,
            **{c: 0 for c in ("min_row", "min_col", "max_row", "max_col")},
            "qc_pass": True,
            "qc_reason": "",
        }
    )
    write_crop_store(tmp_path / "c.h5", images, obs, ["red", "green", "blue"], csv=False)
    res = subprocess.run(
        [sys.executable, "-m", "infogan_cells", "train", "--crops", str(tmp_path / "c.h5"), "--out",
         str(tmp_path / "run"), "--no-progress", "--set", "train.hand_features.mean=true",
         "--set", "train.hand_features.channels=[DNA]", "--set", "train.total_images=16"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "train.hand_features.channels" in line and "DNA" in line and "red, green, blue" in line, line
    assert not (tmp_path / "run" / "network-final.pt").exists()


def _cell_on_black(size: int = 48) -> np.ndarray:
    """A pink disc with a small dark spot, on black, with a blurred rim (as a padded, resized NIH cell)."""
    from scipy import ndimage as ndi

    rr, cc = np.mgrid[:size, :size]
    disc = (rr - size / 2) ** 2 + (cc - size / 2) ** 2 < (size * 0.35) ** 2
    img = np.zeros((size, size, 3), np.float32)
    img[disc] = (200, 140, 150)
    img[size // 2 - 4 : size // 2 - 1, size // 2 + 2 : size // 2 + 5] = (90, 40, 110)  # the parasite
    img = np.stack([ndi.gaussian_filter(img[..., c], 1.2) for c in range(3)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)[None]


def test_median_fill_leaves_the_parasite_the_darkest_structure():
    crop = _cell_on_black()
    green = crop[0, ..., 1]
    spot = green[20:23, 26:29].min()
    assert green.min() < spot  # on black, the surround is darker than the parasite

    filled = mask_background(crop, np.zeros(3, np.uint8), fill="median")[0]
    g = filled[..., 1]
    assert g.min() == spot  # now the parasite is the darkest
    assert tuple(filled[0, 0]) == tuple(filled[-1, -1])  # one colour outside
    assert abs(int(filled[0, 0, 1]) - 140) <= 3  # the cell's own median
    assert np.array_equal(filled[20:23, 26:29], crop[0, 20:23, 26:29])  # the cell untouched

    blanked = mask_background(crop, np.zeros(3, np.uint8), fill="background")[0]
    assert blanked[..., 1].min() < spot  # the old fill keeps the black surround


def test_median_fill_through_the_crop_config():
    cfg = load_config(None, [{"crop": {"mask_background": True, "mask_fill": "median"}}])
    assert cfg.crop.mask_fill == "median"
    with pytest.raises(ConfigError, match=r"crop\.mask_fill"):
        load_config(None, [{"crop": {"mask_fill": "grey"}}])


def test_quantiles_match_torch_and_take_any_size():
    x = torch.randn(5, 3, 97, generator=torch.Generator().manual_seed(0))
    qs = [0.0, 0.005, 0.02, 0.1, 0.5, 0.77, 1.0]
    assert torch.allclose(_quantiles(x, qs), torch.quantile(x, torch.tensor(qs), dim=-1), atol=1e-6)
    big = torch.zeros(1, 2**24 + 8)  # torch.quantile refuses this size
    big[0, :8] = -1.0
    assert _quantiles(big, [0.0, 0.5]).flatten().tolist() == [-1.0, 0.0]
