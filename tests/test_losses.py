"""Losses and the information-loss plumbing, with a test for each bug seen in public InfoGAN ports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infogan_cells.config import LatentSpec, TrainConfig
from infogan_cells.model.latent import Latent, sample_latent, to_input
from infogan_cells.model.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    InfoLoss,
    PairMILoss,
    SupervisedLoss,
    total,
)
from infogan_cells.model.networks import LOG_SIGMA_MIN, QOutput
from infogan_cells.training.step import InfoGANStep, build_networks, build_optimizers, q_of_features

SPEC = LatentSpec(z_dim=4, categorical=[3], n_continuous=2)


def _latent(cat, cont):
    cat = torch.as_tensor(cat).reshape(-1, 1)
    return Latent(torch.zeros(len(cat), 4), cat, torch.as_tensor(cont, dtype=torch.float32))


def _nets(config):
    return build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------
# Adversarial losses


def test_nonsaturating_values():
    d = DiscriminatorLoss("nonsaturating")(torch.zeros(4), torch.zeros(4))
    assert d["Loss/D/adv"].item() == pytest.approx(2 * math.log(2))
    g = GeneratorLoss("nonsaturating")(torch.full((4,), 3.0))
    assert g["Loss/G/adv"].item() == pytest.approx(math.log1p(math.exp(-3.0)))


def test_hinge_is_zero_beyond_the_margin():
    d = DiscriminatorLoss("hinge")(torch.full((4,), 1.5), torch.full((4,), -2.0))
    assert d["Loss/D/adv"].item() == 0.0
    assert GeneratorLoss("hinge")(torch.tensor([1.0, 3.0]))["Loss/G/adv"].item() == -2.0


def test_unknown_gan_loss_raises():
    with pytest.raises(ValueError, match="unknown GAN loss"):
        DiscriminatorLoss("wasserstein")


# --------------------------------------------------------------------------------------
# Information loss


def test_categorical_term_is_cross_entropy_on_raw_logits():
    """A double softmax (softmax, then cross-entropy) can never bring a confident, right Q near 0."""
    target = torch.tensor([0, 2, 1, 2])
    logits = 20.0 * F.one_hot(target, 3).float()
    q = QOutput([logits], torch.zeros(4, 2), torch.zeros(4, 2))
    out = InfoLoss(1.0, 0.1)(q, _latent(target, torch.zeros(4, 2)))
    assert out["Loss/Q/cat"].item() < 1e-6
    assert out["Acc/Q/cat"].item() == 1.0
    random_logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    out = InfoLoss()(
        QOutput([random_logits], torch.zeros(4, 2), torch.zeros(4, 2)), _latent(target, torch.zeros(4, 2))
    )
    assert out["Loss/Q/cat"].item() == pytest.approx(F.cross_entropy(random_logits, target).item())


def test_continuous_term_is_gaussian_nll_with_weights():
    mu = torch.tensor([[0.5, -0.9]])
    log_sigma = torch.tensor([[-1.0, 0.3]])
    c = torch.tensor([[0.2, -0.7]])
    out = InfoLoss(lambda_cat=2.0, lambda_cont=0.5)(
        QOutput([torch.zeros(1, 3)], mu, log_sigma), _latent([1], c)
    )
    want = F.gaussian_nll_loss(mu, c, torch.exp(2 * log_sigma), full=True, reduction="sum").item()
    assert out["Loss/Q/cont"].item() == pytest.approx(want, rel=1e-5)
    assert out["Loss/Q/info"].item() == pytest.approx(2.0 * math.log(3) + 0.5 * want, rel=1e-5)


def test_q_continuous_head_is_not_squashed_and_log_sigma_is_clamped():
    """Codes live in [-1, 1]: a head squashed to [0, 1] (a sigmoid) could never output -0.9."""
    _, D = _nets(TrainConfig())
    last = D.q_net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[3:5] = -0.9  # means of the 2 continuous codes (after 3 categorical logits)
        last.bias[5:7] = -100.0  # log-sigma far below the clamp
    q = D.q_head(D.trunk(torch.zeros(2, 1, 16, 16)))
    assert torch.allclose(q.cont_mu, torch.full((2, 2), -0.9))
    assert torch.equal(q.cont_log_sigma, torch.full((2, 2), LOG_SIGMA_MIN))
    loss = InfoLoss()(q, _latent([0, 1], torch.ones(2, 2)))["Loss/Q/cont"]
    assert torch.isfinite(loss)


def test_supervised_loss_ignores_unlabelled_crops():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([2, -1, 0, -1])
    out = SupervisedLoss(2.0)(logits, targets)["Loss/Q/sup"]
    assert out.item() == pytest.approx(
        2.0 * F.cross_entropy(logits[[0, 2]], targets[[0, 2]]).item(), rel=1e-6
    )
    assert SupervisedLoss()(logits, torch.full((4,), -1))["Loss/Q/sup"].item() == 0.0


def test_pair_mi_is_log_k_for_consistent_balanced_assignments_and_zero_for_independent_ones():
    k = 4
    hard = 30.0 * F.one_hot(torch.arange(8) % k, k).float()
    out = PairMILoss(2.0)(hard, hard)
    assert out["MI/Q/pair"].item() == pytest.approx(math.log(k), abs=1e-4)
    assert out["Loss/Q/pair_mi"].item() == pytest.approx(-2 * math.log(k), abs=1e-3)
    uniform = torch.zeros(8, k)
    assert PairMILoss()(uniform, hard)["MI/Q/pair"].item() == pytest.approx(0.0, abs=1e-6)
    collapsed = 30.0 * F.one_hot(torch.zeros(8, dtype=torch.long), k).float()
    assert PairMILoss()(collapsed, collapsed)["MI/Q/pair"].item() == pytest.approx(0.0, abs=1e-5)


def test_pair_mi_entropy_weight_trades_balance_against_consistency():
    """w H(c) - H(c1|c2): consistent hard assignments have H(c1|c2) = 0, so the objective is w H(c)."""
    k = 4
    balanced = 30.0 * F.one_hot(torch.arange(8) % k, k).float()  # H(c) = log 4
    skewed = 30.0 * F.one_hot(torch.tensor([0, 0, 0, 0, 0, 0, 1, 2]), k).float()  # 6/8, 1/8, 1/8
    h_skewed = -(0.75 * math.log(0.75) + 2 * 0.125 * math.log(0.125))
    for w in (0.5, 1.0, 2.0):
        loss = PairMILoss(1.0, entropy_weight=w)
        assert loss(balanced, balanced)["Loss/Q/pair_mi"].item() == pytest.approx(-w * math.log(k), abs=1e-3)
        assert loss(skewed, skewed)["Loss/Q/pair_mi"].item() == pytest.approx(-w * h_skewed, abs=1e-3)
        assert loss(skewed, skewed)["MI/Q/pair"].item() == pytest.approx(
            h_skewed, abs=1e-3
        )  # reported I unweighted
    # inconsistent views: w = 0 leaves only -H(c1|c2), which is 0 for consistent views and negative here
    noisy = torch.randn(8, k, generator=torch.Generator().manual_seed(0))
    assert PairMILoss(1.0, entropy_weight=0.0)(noisy, balanced)["Loss/Q/pair_mi"].item() > 0.1


def test_total_adds_named_terms():
    terms = {"a": torch.tensor(1.0), "b": torch.tensor(2.5), "c": torch.tensor(10.0)}
    assert total(terms, "a", "b").item() == 3.5


# --------------------------------------------------------------------------------------
# Who the information loss trains


@pytest.mark.parametrize("info_trains_trunk", [True, False])
def test_info_only_step_trains_the_trunk_iff_configured(info_trains_trunk):
    config = TrainConfig(latent=SPEC, info_trains_trunk=info_trains_trunk)
    G, D = _nets(config)
    opt_G, opt_D = build_optimizers(G, D, config, torch.device("cpu"))
    trunk0 = [p.detach().clone() for p in D.trunk.parameters()]
    q0 = [p.detach().clone() for p in D.q_net.parameters()]
    latent = sample_latent(SPEC, 8, generator=torch.Generator().manual_seed(0))
    fake = G(to_input(SPEC, latent)).detach()
    loss = InfoLoss()(q_of_features(D, D.trunk(fake), config.info_trains_trunk), latent)["Loss/Q/info"]
    opt_D.zero_grad(set_to_none=True)
    loss.backward()
    opt_D.step()
    trunk_changed = any(not torch.equal(a, b) for a, b in zip(trunk0, D.trunk.parameters(), strict=True))
    assert trunk_changed == info_trains_trunk
    assert all(
        not torch.equal(a, b) for a, b in zip(q0, D.q_net.parameters(), strict=True)
    )  # Q always learns


def test_optimisers_cover_every_parameter_once():
    """Q must not sit in an optimiser that never updates the trunk it shares with D."""
    config = TrainConfig(latent=SPEC)
    G, D = _nets(config)
    opt_G, opt_D = build_optimizers(G, D, config, torch.device("cpu"))
    ids_G = {id(p) for g in opt_G.param_groups for p in g["params"]}
    ids_D = {id(p) for g in opt_D.param_groups for p in g["params"]}
    assert ids_G == {id(p) for p in G.parameters()}
    assert ids_D == {id(p) for p in D.parameters()}  # trunk, D head and Q head


def test_full_step_updates_both_players_and_restores_grad_flags():
    config = TrainConfig(latent=SPEC, batch_size=4)
    G, D = _nets(config)
    opt_G, opt_D = build_optimizers(G, D, config, torch.device("cpu"))
    step = InfoGANStep(G, D, opt_G, opt_D, SPEC, config, torch.device("cpu"))
    g0 = [p.detach().clone() for p in G.parameters()]
    d0 = [p.detach().clone() for p in D.parameters()]
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    latent = sample_latent(SPEC, 4, generator=torch.Generator().manual_seed(0))
    labelled = (torch.rand(2, 1, 16, 16) * 2 - 1, torch.tensor([0, 2]))
    terms, q_real = step(real, latent, labelled, want_q_real=True, generator=torch.Generator().manual_seed(0))
    assert {
        "Loss/D/adv",
        "Loss/G/adv",
        "Loss/Q/cat",
        "Loss/Q/cont",
        "Loss/Q/sup",
        "Loss/G/info",
        "Loss/Q/pair_mi",
    } <= set(terms)
    assert all(v.ndim == 0 and not v.requires_grad for v in terms.values())
    assert q_real is not None and q_real.cat_logits[0].shape == (4, 3)
    assert all(not torch.equal(a, b) for a, b in zip(g0, G.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, D.parameters(), strict=True))
    assert all(p.requires_grad for p in D.parameters())
