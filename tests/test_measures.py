"""Pinned continuous codes (``train.code_measures``): the measures, their readout in Q, the config.

The learning test (a pinned code becomes a slider of its measure) is in test_learning.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from tiny_step import CPU, _config, _latent, _real, _setup

from infogan_cells.analysis.metrics import pinned_codes
from infogan_cells.analysis.morphology import intensity_features, measure_morphology
from infogan_cells.config import LatentSpec, TrainConfig
from infogan_cells.errors import ConfigError
from infogan_cells.model.checkpoint import autocast, resolve_precision
from infogan_cells.model.measures import measure, parse
from infogan_cells.model.networks import Discriminator
from infogan_cells.training.step import build_networks

SPEC = LatentSpec(z_dim=4, categorical=[2], n_continuous=2)


def slanted_bars(shears: list[float], size: int = 32) -> torch.Tensor:
    """One bright bar per shear (columns moved per row, top to the right when positive) on -1."""
    x = -torch.ones(len(shears), 1, size, size)
    for i, shear in enumerate(shears):
        for r in range(4, size - 4):
            c = round(size / 2 + shear * (size / 2 - r))
            x[i, 0, r, c - 1 : c + 2] = 1
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)


def test_slant_orders_bars_as_the_analysis_does():
    shears = [-0.5, -0.25, 0.0, 0.2, 0.45]
    bars = slanted_bars(shears)
    slant = measure(bars, "slant", 0).numpy()
    assert np.all(np.diff(slant) > 0), slant
    assert slant[2] == pytest.approx(0.0, abs=1e-6)
    analysed = measure_morphology(to_uint8(bars))["slant"].to_numpy()
    assert spearmanr(slant, analysed).statistic == pytest.approx(1.0)
    assert np.sign(slant[[0, 4]]).tolist() == np.sign(analysed[[0, 4]]).tolist()


def test_total_counts_the_stain_above_the_background_only():
    rng = torch.Generator().manual_seed(0)
    x = torch.full((3, 2, 32, 32), -0.8)
    x[:, 1] += 0.02 * torch.randn(3, 32, 32, generator=rng)
    for i, radius in enumerate([4, 6, 8]):  # larger cells hold more DNA
        yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        x[i, 1][(yy - 16) ** 2 + (xx - 16) ** 2 <= radius**2] = 0.6
    total = measure(x, "total", 1)
    assert torch.all(total.diff() > 0)
    assert torch.allclose(measure(x + 0.1, "total", 1), total, atol=1e-5)  # a brighter background
    assert torch.allclose(measure(x, "log_total", 1), torch.log(total + 1e-3))
    rho = spearmanr(total.numpy(), intensity_features(to_uint8(x), channel_names=["a", "DNA"])["total_DNA"])
    assert rho.statistic == pytest.approx(1.0)


def test_measures_pass_gradients_to_the_image():
    x = slanted_bars([0.3]).requires_grad_(True)
    for kind in ("total", "log_total", "slant"):
        (grad,) = torch.autograd.grad(measure(x, kind, 0).sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, kind


def test_parse_names_the_key_the_measures_and_the_channels():
    assert parse("log_total:DNA", ["BF", "DNA"], "k") == ("log_total", 1)
    with pytest.raises(ConfigError, match=r"'train.code_measures\[0\]'.*'Ch4_DNA'.*\(R, G, B\)"):
        parse("total:Ch4_DNA", ["R", "G", "B"], "train.code_measures[0]")
    with pytest.raises(ConfigError, match="total, log_total, slant"):
        parse("area:R", ["R"], "k")
    assert parse("slant", ["gray"], "k") == ("slant", 0)  # one channel: no need to name it
    with pytest.raises(ConfigError, match=r"no channel is named.*\(BF, DNA\)"):
        parse("slant", ["BF", "DNA"], "k")


@pytest.mark.parametrize(
    "measures",
    [["total:R", "slant:R", "total:R"], ["size:R"], [3], "total:R"],
    ids=["more-than-codes", "unknown", "not-a-string", "not-a-list"],
)
def test_config_refuses_bad_code_measures(measures):
    with pytest.raises(ConfigError, match="'train.code_measures'"):
        TrainConfig(latent=SPEC, code_measures=measures).check("train.")


def test_a_channel_the_crops_lack_is_refused_before_training():
    config = TrainConfig(latent=SPEC, code_measures=["log_total:Ch4_DNA_stain"])
    config.check("train.")  # the names are only known with the crops
    with pytest.raises(ConfigError, match=r"'Ch4_DNA_stain' is not among the crops' channels \(R, G, B\)"):
        build_networks(SPEC, 16, 3, config, torch.Generator().manual_seed(0), ["R", "G", "B"])


def test_q_reads_a_pinned_code_from_its_measure_alone():
    config = TrainConfig(latent=SPEC, d_channels=8, code_measures=[None, "slant:ink"])
    _, D = build_networks(SPEC, 32, 1, config, torch.Generator().manual_seed(0), ["ink"])
    bars = slanted_bars([-0.4, 0.0, 0.4, 0.1])
    D.trunk.pins.calibrate([bars])
    D.eval()
    q = D.q_head(D.trunk(bars))
    slant = measure(bars, "slant", 0)
    expected = (slant - slant.mean()) / slant.std() / 3**0.5  # U(-1, 1) has sd 1/sqrt(3)
    assert torch.allclose(q.cont_mu[:, 1], expected, atol=1e-5)
    assert not torch.allclose(q.cont_mu[:, 0], expected, atol=1e-2)  # code 0 stays Q's own estimate
    # the heads never see the readout: D's logit and Q's other outputs stay when only it moves
    logit, free = D.d_head(D.trunk(bars)), q.cont_mu[:, 0]
    D.trunk.pins.mean += 5.0
    shifted = D.q_head(D.trunk(bars))
    assert torch.equal(D.d_head(D.trunk(bars)), logit)
    assert torch.equal(shifted.cont_mu[:, 0], free)
    assert not torch.allclose(shifted.cont_mu[:, 1], expected)
    D.trunk.pins.mean -= 5.0
    # the level Q learns for each category is taken off the readout, weighted by Q's probabilities
    with torch.no_grad():
        D.trunk.pins.offset[0] = torch.tensor([0.5, -0.25])
    q2 = D.q_head(D.trunk(bars))
    level = torch.softmax(q2.cat_logits[0], dim=1) @ torch.tensor([0.5, -0.25])
    assert torch.allclose(q2.cont_mu[:, 1], expected - level, atol=1e-5)
    # the constructor arguments and state rebuild the same readout, calibration included
    rebuilt = Discriminator(**D.kwargs)
    rebuilt.load_state_dict(D.state_dict())
    rebuilt.eval()
    assert torch.allclose(rebuilt.q_head(rebuilt.trunk(bars)).cont_mu[:, 1], expected - level, atol=1e-5)
    assert "code_measures" not in Discriminator(SPEC, img_size=32, channels=1, width=8).kwargs


def test_unpinned_discriminator_keeps_its_checkpoint_keys():
    a = Discriminator(SPEC, img_size=32, channels=1, width=8)
    b = Discriminator(SPEC, img_size=32, channels=1, width=8, code_measures=[["total", 0]])
    assert set(b.state_dict()) - set(a.state_dict()) == {
        "trunk.pins.mean",
        "trunk.pins.sd",
        "trunk.pins.offset",
    }
    assert set(a.state_dict()) <= set(b.state_dict())


def test_the_analysis_names_the_pinned_codes():
    pinned = Discriminator(SPEC, img_size=32, channels=2, width=8, code_measures=[None, ["log_total", 1]])
    assert pinned_codes(pinned, ["BF", "DNA"]) == {"c1": "log_total:DNA"}
    assert pinned_codes(Discriminator(SPEC, img_size=32, channels=2, width=8), ["BF", "DNA"]) == {}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_step_with_a_pinned_code_runs_in_either_precision(precision):
    """bf16 autocast (the CUDA default) on the CPU: the readout is measured in fp32 and the step's
    losses stay finite; Q's mean of the pinned code is the readout, also under autocast."""
    config = _config(code_measures=["total"], precision=precision)
    G, D, step = _setup(config)
    D.trunk.pins.calibrate([_real(32)])
    terms, _ = step(_real(8), _latent(8))
    assert all(torch.isfinite(v).all() for v in terms.values()), terms
    x = _real(4)
    with autocast(CPU, resolve_precision(precision, CPU)):
        q = D.q_head(D.trunk(x))
    expected = D.trunk.pins.relative(D.trunk.pins(x), q.cat_logits[0])
    assert q.cont_mu.dtype == torch.float32
    torch.testing.assert_close(q.cont_mu[:, 0], expected[:, 0], atol=0.02, rtol=0.01)
