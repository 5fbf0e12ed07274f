"""The real training step (``InfoGANStep``), the EMA and the generator's output, tested for what
they do: each test here fails on a one-line bug that leaves training running and every loss
finite (a loss's sign, what a gradient reaches, what an optimiser updates). docs/testing.md lists
the bugs and the test that catches each.

Networks are tiny (16 x 16 px, one channel, width 4-8), so every test runs in about a second
on one CPU core.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_step import CPU, SPEC, _changed, _config, _fresh, _latent, _params, _real, _setup

from infogan_cells.config import AugmentConfig, LatentSpec
from infogan_cells.model.augment import augment_batch
from infogan_cells.model.latent import Latent, to_input
from infogan_cells.model.losses import InfoLoss, ModeSeekingLoss, PairMILoss, SupervisedLoss
from infogan_cells.model.networks import Discriminator, QOutput
from infogan_cells.training.averaging import ema_update
from infogan_cells.training.step import InfoGANStep, build_optimizers

# --------------------------------------------------------------------------------------
# The adversarial losses the step reports, at logits far from 0 (where every sign differs)


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_step_reports_the_adversarial_losses_of_its_logits(kind):
    """D's bias is set so that real and fake logits sit near +1.5: a flipped sign on either term
    (softplus(-fake) for softplus(fake)) changes the value by more than 1."""
    config = _config(loss=kind)
    G, D, step = _setup(config)
    with torch.no_grad():
        D.d_head[-1].bias.fill_(1.5)
    real, latent = _real(8), _latent(8)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    with torch.no_grad():
        fake = G0(to_input(SPEC, latent))
        real_logits = D0.d_head(D0.trunk(real)).squeeze(1)
        fake_logits = D0.d_head(D0.trunk(fake)).squeeze(1)
    assert real_logits.mean() > 1 and fake_logits.mean() > 1  # the test's premise

    terms, _ = step(real, latent)

    if kind == "nonsaturating":
        want_real = torch.log1p(torch.exp(-real_logits)).mean()
        want_fake = torch.log1p(torch.exp(fake_logits)).mean()
    else:
        want_real = torch.clamp(1 - real_logits, min=0).mean()
        want_fake = torch.clamp(1 + fake_logits, min=0).mean()
    assert terms["Loss/D/real"].item() == pytest.approx(want_real.item(), rel=1e-4)
    assert terms["Loss/D/fake"].item() == pytest.approx(want_fake.item(), rel=1e-4)
    assert terms["Loss/D/adv"].item() == pytest.approx((want_real + want_fake).item(), rel=1e-4)


def test_d_step_raises_real_logits_and_lowers_fake_logits():
    """Several D steps on the same real batch and a frozen G (lr_g ~ 0): D learns to tell them apart."""
    config = _config(lr_d=2e-3, lr_g=1e-12, lambda_cat=0.0, lambda_cont=0.0)
    G, D, step = _setup(config)
    real, latent = _real(16), _latent(16)
    with torch.no_grad():
        fake = G(to_input(SPEC, latent))

    def logits():
        with torch.no_grad():
            return D.d_head(D.trunk(real)).mean().item(), D.d_head(D.trunk(fake)).mean().item()

    r0, f0 = logits()
    for _ in range(10):
        step(real, latent)
    r1, f1 = logits()
    assert r1 > r0 + 0.5
    assert f1 < f0 - 0.5


def test_g_step_raises_the_fake_logits():
    """With D frozen (lr_d ~ 0), G's steps move its images to where D says 'real'."""
    config = _config(lr_d=1e-12, lr_g=2e-3, lambda_cat=0.0, lambda_cont=0.0)
    G, D, step = _setup(config)
    real, latent = _real(16), _latent(16)

    def fake_logit():
        with torch.no_grad():
            return D.d_head(D.trunk(G(to_input(SPEC, latent)))).mean().item()

    before = fake_logit()
    for _ in range(10):
        step(real, latent)
    assert fake_logit() > before + 0.2


# --------------------------------------------------------------------------------------
# The information loss: what it trains


@pytest.mark.parametrize("lambdas", [(1.0, 0.1), (1.0, 0.0), (0.0, 0.1)])
def test_information_loss_trains_q(lambdas):
    """Q's own weights (not shared with D) change in a step iff the information loss weighs something."""
    lambda_cat, lambda_cont = lambdas
    G, D, step = _setup(_config(lambda_cat=lambda_cat, lambda_cont=lambda_cont))
    q0 = _params(D.q_net)
    step(_real(8), _latent(8))
    assert _changed(q0, D.q_net)

    G, D, step = _setup(_config(lambda_cat=0.0, lambda_cont=0.0))
    q0 = _params(D.q_net)
    step(_real(8), _latent(8))
    assert not _changed(q0, D.q_net)


def test_q_learns_to_read_the_code_only_with_the_information_loss():
    """G frozen (lr_g ~ 0), so G cannot learn to please a fixed Q: Q's accuracy on fresh latents
    rises well above chance (1/3) only when the information loss is in the step."""
    spec = LatentSpec(z_dim=2, categorical=[3], n_continuous=0)

    def accuracy_after(lambda_cat: float) -> float:
        config = _config(latent=spec, lambda_cat=lambda_cat, lambda_cont=0.0, lr_g=1e-12, lr_d=2e-3)
        G, D, step = _setup(config)
        for i in range(40):
            step(_real(32, seed=i), _latent(32, seed=100 + i, spec=spec))
        test = _latent(256, seed=999, spec=spec)
        with torch.no_grad():
            q = D.q_head(D.trunk(G(to_input(spec, test))))
        return (q.cat_logits[0].argmax(1) == test.cat[:, 0]).float().mean().item()

    assert accuracy_after(1.0) > 0.75
    assert accuracy_after(0.0) < 0.55


@pytest.mark.parametrize("info_trains_trunk", [True, False])
def test_information_loss_reaches_the_trunk_iff_configured(info_trains_trunk):
    """The same step with and without the information loss: D's trunk ends differently iff the
    information loss trains it; D's real/fake head is not trained by it either way."""
    ends = {}
    for lam in (1.0, 0.0):
        G, D, step = _setup(
            _config(lambda_cat=lam, lambda_cont=lam / 10, info_trains_trunk=info_trains_trunk)
        )
        step(_real(8), _latent(8))
        ends[lam] = D
    trunk_differs = any(
        not torch.equal(a, b)
        for a, b in zip(ends[1.0].trunk.parameters(), ends[0.0].trunk.parameters(), strict=True)
    )
    assert trunk_differs == info_trains_trunk
    assert all(
        torch.equal(a, b)
        for a, b in zip(ends[1.0].d_head.parameters(), ends[0.0].d_head.parameters(), strict=True)
    )


def test_information_loss_trains_the_generator():
    """G's step includes the information loss: G ends differently with and without it. (The
    trunk is kept out of the information loss, so D's trunk and head, and with them G's
    adversarial gradient, are the same in both runs.)"""
    ends = {}
    for lam in (1.0, 0.0):
        G, D, step = _setup(_config(lambda_cat=lam, lambda_cont=lam / 10, info_trains_trunk=False))
        step(_real(8), _latent(8))
        ends[lam] = G
    assert any(
        not torch.equal(a, b) for a, b in zip(ends[1.0].parameters(), ends[0.0].parameters(), strict=True)
    )


def test_the_step_reports_the_information_loss_of_the_fake_batch():
    """Loss/Q/cat is the cross-entropy of Q (before the step) on the step's fake batch, at logits
    that are not uniform."""
    G, D, step = _setup(_config())
    with torch.no_grad():
        D.q_net[-1].bias[:3] = torch.tensor([2.0, -1.0, 0.5])
    latent = _latent(8)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    with torch.no_grad():
        q = D0.q_head(D0.trunk(G0(to_input(SPEC, latent))))
    terms, _ = step(_real(8), latent)
    want = F.cross_entropy(q.cat_logits[0], latent.cat[:, 0]).item()
    assert terms["Loss/Q/cat"].item() == pytest.approx(want, rel=1e-4)


def test_a_step_does_not_depend_on_gradients_left_by_the_previous_one():
    """Two steps, against the same second step taken by copies whose gradients were cleared (as
    after a resume): both players must end bit-identical."""
    config = _config()
    G, D, step = _setup(config)
    step(_real(8, seed=1), _latent(8, seed=2))
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    opt_G2, opt_D2 = build_optimizers(G2, D2, config, CPU)
    opt_G2.load_state_dict(copy.deepcopy(step.opt_G.state_dict()))
    opt_D2.load_state_dict(copy.deepcopy(step.opt_D.state_dict()))
    for p in [*G2.parameters(), *D2.parameters()]:
        p.grad = None
    step2 = InfoGANStep(G2, D2, opt_G2, opt_D2, SPEC, config, CPU)

    step(_real(8, seed=3), _latent(8, seed=4))
    step2(_real(8, seed=3), _latent(8, seed=4))

    for a, b in zip([*G.parameters(), *D.parameters()], [*G2.parameters(), *D2.parameters()], strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# The IIC (pair mutual information) term


def _pair_mi(D, real: torch.Tensor, augment: AugmentConfig) -> float:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        a = D.q_head(D.trunk(augment_batch(real, augment, g))).cat_logits[0]
        b = D.q_head(D.trunk(augment_batch(real, augment, g))).cat_logits[0]
    return PairMILoss()(a, b)["MI/Q/pair"].item()


def test_pair_mi_term_raises_the_mutual_information_of_two_views():
    """With the IIC term in the step, Q's assignments of two views of the same real crops come to
    agree (mutual information well above its start); without it, they do not."""
    augment = AugmentConfig(rot90=True, flip=True, shift=1)
    real = torch.cat([_real(16, seed=3), -_real(16, seed=4)])  # two kinds of crop

    def mi_after(lambda_pair_mi: float) -> tuple[float, float]:
        config = _config(
            diff_augment=augment,
            lambda_pair_mi=lambda_pair_mi,
            lambda_cat=0.0,
            lambda_cont=0.0,
            lr_d=2e-3,
            pair_mi_entropy=1.0,
        )
        G, D, step = _setup(config)
        start = _pair_mi(D, real, augment)
        g = torch.Generator().manual_seed(5)
        for i in range(15):
            step(real, _latent(32, seed=i), generator=g)
        return start, _pair_mi(D, real, augment)

    start, with_term = mi_after(1.0)
    _, without = mi_after(0.0)
    assert with_term > start + 0.2
    assert with_term > without + 0.2


def test_pair_mi_loss_sign_at_uneven_assignments():
    """-lambda * I at assignments that are neither uniform nor one-hot (I computed here by hand)."""
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.5, -0.5]])
    b = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.5, 0.0]])
    pa, pb = a.softmax(1), b.softmax(1)
    joint = pa.t() @ pb / 3
    joint = (joint + joint.t()) / 2
    p = joint.sum(1)
    mi = sum(joint[i, j] * math.log(joint[i, j] / (p[i] * p[j])) for i in range(2) for j in range(2)).item()
    out = PairMILoss(2.0)(a, b)
    assert mi > 0.01
    assert out["MI/Q/pair"].item() == pytest.approx(mi, rel=1e-5)
    assert out["Loss/Q/pair_mi"].item() == pytest.approx(-2.0 * mi, rel=1e-5)


# --------------------------------------------------------------------------------------
# What the networks and optimisers are built from


def test_optimisers_take_the_configured_rates_and_betas():
    config = _config(lr_g=3e-4, lr_d=7e-5, beta1=0.1, beta2=0.95)
    G, D = _fresh(config)
    opt_G, opt_D = build_optimizers(G, D, config, CPU)
    for opt, lr in ((opt_G, 3e-4), (opt_D, 7e-5)):
        (group,) = opt.param_groups
        assert group["lr"] == lr and group["betas"] == (0.1, 0.95)


@pytest.mark.parametrize(("spectral_norm", "q_overcluster"), [(False, 0), (True, 12)])
def test_networks_take_the_configured_sizes(spectral_norm, q_overcluster):
    config = _config(g_channels=4, d_channels=12, spectral_norm=spectral_norm, q_overcluster=q_overcluster)
    G, D = _fresh(config)
    assert G.kwargs["width"] == 4 and D.kwargs["width"] == 12
    assert D.kwargs["spectral_norm"] == spectral_norm
    assert D.kwargs.get("q_overcluster", 0) == q_overcluster
    q = D.q_head(D.trunk(_real(2)))
    assert (q.over_logits is None) == (q_overcluster == 0)
    if q_overcluster:
        assert q.over_logits.shape == (2, q_overcluster)


def test_mode_seeking_punishes_a_generator_that_ignores_its_noise():
    """The loss is lambda / ratio of image to noise differences: large for identical images,
    smaller the more the images differ for the same noise difference."""
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    loss = ModeSeekingLoss(2.0)
    same = loss(a, a.clone(), z_a, z_b)
    near, far = loss(a, a + 0.05, z_a, z_b), loss(a, -a, z_a, z_b)
    assert same["Div/G/ratio"].item() == 0 and same["Loss/G/mode_seeking"].item() > 1e4
    ratio = (2 * a).abs().mean() / (z_a - z_b).abs().mean()
    assert far["Div/G/ratio"].item() == pytest.approx(ratio.item(), rel=1e-5)
    assert far["Loss/G/mode_seeking"].item() == pytest.approx(2.0 / ratio.item(), rel=1e-4)
    assert far["Loss/G/mode_seeking"] < near["Loss/G/mode_seeking"] < same["Loss/G/mode_seeking"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_step_with_the_conditional_d_and_mode_seeking_runs_in_either_precision(precision):
    """bf16 autocast (the CUDA default) on the CPU: with both options the step's losses stay finite,
    the mode-seeking ratio is positive, and both players and D's class embedding are updated."""
    config = _config(conditional_d=True, lambda_mode_seeking=0.5, precision=precision)
    G, D, step = _setup(config)
    g0, e0 = _params(G), D.d_embed.weight.detach().clone()
    terms, _ = step(_real(8), _latent(8))
    assert all(torch.isfinite(v).all() for v in terms.values()), terms
    assert terms["Div/G/ratio"] > 0 and torch.isfinite(terms["Loss/G/mode_seeking"])
    assert _changed(g0, G) and not torch.equal(e0, D.d_embed.weight)


def test_a_conditional_d_projects_its_category_and_rebuilds_from_its_kwargs():
    """``conditional_d``: D's logit depends on the category it is given (and equals the plain logit
    without one); the checkpoint's constructor arguments rebuild the same D. Without the option D
    has no embedding and its kwargs are those of before."""
    plain_D = _fresh(_config())[1]
    assert plain_D.d_embed is None and "conditional" not in plain_D.kwargs
    _, D = _fresh(_config(conditional_d=True))
    D.eval()
    h = D.trunk(_real(4))
    plain = D.d_head(h).squeeze(1)
    by_cat = torch.stack([D.d_logit(h, torch.full((4,), k)) for k in range(3)])
    assert torch.equal(D.d_logit(h), plain)
    assert (by_cat[0] - by_cat[1]).abs().min() > 0 and (by_cat[1] - by_cat[2]).abs().min() > 0
    rebuilt = Discriminator(**D.kwargs)
    rebuilt.load_state_dict(D.state_dict())
    rebuilt.eval()
    torch.testing.assert_close(
        rebuilt.d_logit(rebuilt.trunk(_real(4)), torch.ones(4, dtype=torch.long)), by_cat[1]
    )


def test_information_loss_averages_over_the_batch():
    """Three samples: the continuous term is the mean over the batch of the NLL summed over codes."""
    mu = torch.tensor([[0.5, -0.9], [0.1, 0.2], [-1.0, 0.0]])
    log_sigma = torch.tensor([[-1.0, 0.3], [0.0, 0.0], [0.5, -0.5]])
    c = torch.tensor([[0.2, -0.7], [0.0, 0.0], [1.0, 1.0]])
    cat = torch.tensor([[0], [1], [2]])
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    out = InfoLoss(1.0, 1.0)(QOutput([logits], mu, log_sigma), Latent(torch.zeros(3, 4), cat, c))
    nll = F.gaussian_nll_loss(mu, c, torch.exp(2 * log_sigma), full=True, reduction="sum").item() / 3
    assert out["Loss/Q/cont"].item() == pytest.approx(nll, rel=1e-5)
    assert out["Loss/Q/cat"].item() == pytest.approx(F.cross_entropy(logits, cat[:, 0]).item(), rel=1e-5)


def test_supervised_loss_of_a_single_labelled_crop():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    out = SupervisedLoss(1.0)(logits, torch.tensor([-1, 1]))["Loss/Q/sup"]
    assert out.item() == pytest.approx(F.cross_entropy(logits[1:], torch.tensor([1])).item(), rel=1e-6)


# --------------------------------------------------------------------------------------
# EMA of the generator


def test_ema_moves_toward_the_live_weights():
    config = _config()
    G, _, _ = _setup(config, seed=0)
    G_ema, _, _ = _setup(config, seed=1)  # different weights
    G.train()
    G(to_input(SPEC, _latent(8)))  # BatchNorm running statistics that differ from G_ema's
    live = _params(G)
    old = _params(G_ema)

    ema_update(G_ema, G, 0.75)

    for e, o, p in zip(G_ema.parameters(), old, live, strict=True):
        torch.testing.assert_close(e, 0.75 * o + 0.25 * p)
    assert not _changed(live, G)  # the live weights are left alone
    for be, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        assert torch.equal(be, b)
    dist = sum((e - p).abs().sum().item() for e, p in zip(G_ema.parameters(), G.parameters(), strict=True))
    dist0 = sum((o - p).abs().sum().item() for o, p in zip(old, live, strict=True))
    assert dist == pytest.approx(0.75 * dist0, rel=1e-4)


@pytest.mark.parametrize(("beta", "share_of_old"), [(0.0, 0.0), (1.0, 1.0)])
def test_ema_beta_ends(beta, share_of_old):
    config = _config()
    G, _, _ = _setup(config, seed=0)
    G_ema, _, _ = _setup(config, seed=1)
    old = _params(G_ema)
    ema_update(G_ema, G, beta)
    for e, o, p in zip(G_ema.parameters(), old, G.parameters(), strict=True):
        torch.testing.assert_close(e, share_of_old * o + (1 - share_of_old) * p)


# --------------------------------------------------------------------------------------
# The generator's output


def test_generator_output_stays_in_range():
    G, _, _ = _setup(_config())
    G.eval()
    with torch.no_grad():
        for scale in (1.0, 30.0, 1e4):
            x = G(to_input(SPEC, _latent(16)) * scale)
            assert x.shape == (16, 1, 16, 16)
            assert x.abs().max() <= 1.0


def test_generator_output_saturates_like_tanh():
    """tanh(2a) = 2 tanh(a) / (1 + tanh(a)^2). With its biases at 0 and BatchNorm at its initial
    statistics, G in eval mode is positively homogeneous up to its output function, so doubling
    the input doubles the pre-activation: a Tanh output obeys the identity, a clip (Hardtanh) or
    no squashing does not."""
    G, _, _ = _setup(_config())
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    G.eval()
    base = to_input(SPEC, _latent(16))
    with torch.no_grad():
        scale = 1.0
        while G(base * scale).abs().max() < 0.6:  # pick a scale that reaches the curved part
            scale *= 1.5
            assert scale < 1e6
        y1 = G(base * scale).double()
        y2 = G(base * 2 * scale).double()
    assert y1.abs().max() < 0.9
    torch.testing.assert_close(y2, 2 * y1 / (1 + y1**2), atol=2e-4, rtol=1e-3)
