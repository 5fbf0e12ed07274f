"""The step's gradients are the gradients of its objective, term by term: adversarial,
information, supervised and IIC, each compared with the gradient computed apart (see
docs/testing.md)."""

from __future__ import annotations

import pytest
import torch
from tiny_step import CPU, SPEC, _config, _fresh, _latent, _real, _setup

from infogan_cells.config import AugmentConfig, TrainConfig
from infogan_cells.model.augment import augment_batch
from infogan_cells.model.latent import Latent, to_input
from infogan_cells.model.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    InfoLoss,
    ModeSeekingLoss,
    PairMILoss,
    SupervisedLoss,
)
from infogan_cells.training.step import InfoGANStep, build_networks

# --------------------------------------------------------------------------------------
# The step's gradients are the gradients of its objective, term by term
#
# With SGD at lr = 0 the weights stay put, and after a step each parameter's .grad holds the
# gradient of its player's objective at the initial weights (D's from the D step, G's from the
# G step). Switching one term off and on isolates that term's gradient, compared here with the
# gradient of the loss function computed independently on copies of the networks. A flipped
# sign, a missing or extra detach, or a gradient leaking into the other player fails these.


def _grads_of_step(
    config: TrainConfig, real, latent, supervised=None, want_q_real=False, generator=None, partner=None
):
    G, D = build_networks(config.latent, 16, 1, config, torch.Generator().manual_seed(0))
    step = InfoGANStep(
        G,
        D,
        torch.optim.SGD(G.parameters(), lr=0.0),
        torch.optim.SGD(D.parameters(), lr=0.0),
        config.latent,
        config,
        CPU,
    )
    terms, _ = step(real, latent, supervised, want_q_real=want_q_real, generator=generator, partner=partner)

    def grads(module):
        return {
            n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in module.named_parameters()
        }

    return grads(G), grads(D), terms


def _autograd(loss, module):
    names, params = zip(*module.named_parameters(), strict=True)
    found = torch.autograd.grad(loss, params, allow_unused=True)
    return {
        n: (g if g is not None else torch.zeros_like(p)) for n, g, p in zip(names, found, params, strict=True)
    }


def _assert_grads(got: dict, want: dict) -> None:
    """Equal up to float rounding: within 1e-3 of each tensor's largest entry (a gradient through
    one view instead of two, or with the other sign, is off by half of it or more)."""
    for name in want:
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-3 * scale + 1e-9, msg=name)


def _difference(a: dict, b: dict) -> dict:
    return {n: a[n] - b[n] for n in a}


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_adversarial_gradients_of_each_player(kind):
    """Information terms off: D's gradient is that of D's loss on real and (detached) fake logits,
    G's that of G's loss through D; neither player's step leaves a gradient on the other."""
    config = _config(loss=kind, lambda_cat=0.0, lambda_cont=0.0)
    real, latent = _real(8), _latent(8)
    got_G, got_D, _ = _grads_of_step(config, real, latent)

    G, D = _fresh(config)
    fake = G(to_input(SPEC, latent))
    d_loss = DiscriminatorLoss(kind)(
        D.d_head(D.trunk(real)).squeeze(1), D.d_head(D.trunk(fake.detach())).squeeze(1)
    )["Loss/D/adv"]
    _assert_grads(got_D, _autograd(d_loss, D))
    G, D = _fresh(config)
    g_loss = GeneratorLoss(kind)(D.d_head(D.trunk(G(to_input(SPEC, latent)))).squeeze(1))["Loss/G/adv"]
    _assert_grads(got_G, _autograd(g_loss, G))


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_conditional_adversarial_gradients(kind):
    """A class-conditional D (``conditional_d``): D's logit adds the projection <embed(y), features>,
    y Q's category of each real crop (taken as a fixed label: no adversarial gradient reaches Q's
    head through it) and G's code for each fake; G's gradient is that of G's loss through it."""
    config = _config(loss=kind, lambda_cat=0.0, lambda_cont=0.0, conditional_d=True)
    real, latent = _real(8), _latent(8)
    got_G, got_D, _ = _grads_of_step(config, real, latent)

    G, D = _fresh(config)
    code = latent.cat[:, 0]
    h_real = D.trunk(real)
    y_real = D.q_head(h_real).cat_logits[0].argmax(1)
    assert len(set(y_real.tolist())) > 1  # the labels of real crops vary: the embedding is exercised
    fake = G(to_input(SPEC, latent)).detach()
    d_loss = DiscriminatorLoss(kind)(D.d_logit(h_real, y_real), D.d_logit(D.trunk(fake), code))["Loss/D/adv"]
    _assert_grads(got_D, _autograd(d_loss, D))
    assert got_D["d_embed.weight"].abs().sum() > 0
    assert all(got_D[n].abs().sum() == 0 for n in got_D if n.startswith("q_net"))
    # the projection term is part of the gradient: without it D's gradient is another one
    plain = DiscriminatorLoss(kind)(D.d_logit(D.trunk(real)), D.d_logit(D.trunk(fake)))["Loss/D/adv"]
    plain_grad = _autograd(plain, D)
    assert not all(torch.allclose(got_D[n], plain_grad[n]) for n in plain_grad if n.startswith("trunk"))

    G, D = _fresh(config)
    g_loss = GeneratorLoss(kind)(D.d_logit(D.trunk(G(to_input(SPEC, latent))), code))["Loss/G/adv"]
    _assert_grads(got_G, _autograd(g_loss, G))


def test_mode_seeking_gradient():
    """``lambda_mode_seeking``: G's gradient gains that of the mode-seeking loss on the first half
    of its batch against the same codes with each image's noise taken from its neighbour; D's
    gradient does not change."""
    real, latent = _real(8), _latent(8)
    kw = dict(lambda_cat=0.0, lambda_cont=0.0)
    G_on, D_on, terms = _grads_of_step(_config(lambda_mode_seeking=0.7, **kw), real, latent)
    G_off, D_off, _ = _grads_of_step(_config(**kw), real, latent)

    G, _ = _fresh(_config(**kw))
    twin = Latent(latent.z[:4].roll(1, 0), latent.cat[:4], latent.cont[:4])
    images = G(to_input(SPEC, latent))[:4]
    others = G(to_input(SPEC, twin))
    loss = ModeSeekingLoss(0.7)(images, others, latent.z[:4], twin.z)["Loss/G/mode_seeking"]
    assert terms["Loss/G/mode_seeking"].item() == pytest.approx(loss.item(), rel=1e-5)
    got = _difference(G_on, G_off)
    assert any(g.abs().sum() > 0 for g in got.values())
    _assert_grads(got, _autograd(loss, G))
    _assert_grads(D_on, D_off)


@pytest.mark.parametrize("pinned", [[], [None, "total"]], ids=["free", "pinned"])
@pytest.mark.parametrize("info_trains_trunk", [True, False])
def test_information_gradients_of_each_player(info_trains_trunk, pinned):
    """The information loss's share of D's gradient: Q's head always, D's trunk iff configured,
    never D's real/fake head; its share of G's gradient: the loss through D+Q, same sign. With a
    pinned code (``code_measures``) G's share reaches it through the measure of its images too."""
    kw = dict(info_trains_trunk=info_trains_trunk, code_measures=pinned)
    on = _config(lambda_cat=1.0, lambda_cont=0.3, **kw)
    off = _config(lambda_cat=0.0, lambda_cont=0.0, **kw)
    real, latent = _real(8), _latent(8)
    G_on, D_on, _ = _grads_of_step(on, real, latent)
    G_off, D_off, _ = _grads_of_step(off, real, latent)

    G, D = _fresh(on)
    h = D.trunk(G(to_input(SPEC, latent)).detach())
    q = D.q_head(h if info_trains_trunk else h.detach())
    want_D = _autograd(InfoLoss(1.0, 0.3)(q, latent)["Loss/Q/info"], D)
    got_D = _difference(D_on, D_off)
    _assert_grads(got_D, want_D)
    assert any(got_D[n].abs().sum() > 0 for n in got_D if n.startswith("q_net"))
    trunk = [n for n in got_D if n.startswith("trunk") and not n.startswith("trunk.pins")]  # pins: Q's levels
    assert any(got_D[n].abs().sum() > 0 for n in trunk) == info_trains_trunk
    assert all(got_D[n].abs().sum() > 0 for n in got_D if n.startswith("trunk.pins"))
    assert all(got_D[n].abs().sum() == 0 for n in got_D if n.startswith("d_head"))

    G, D = _fresh(on)
    want_G = _autograd(
        InfoLoss(1.0, 0.3)(D.q_head(D.trunk(G(to_input(SPEC, latent)))), latent)["Loss/Q/info"], G
    )
    _assert_grads(_difference(G_on, G_off), want_G)


@pytest.mark.parametrize("info_trains_trunk", [True, False])
def test_supervised_gradient(info_trains_trunk):
    """The supervised loss's share of D's gradient: cross-entropy of Q's first head on the labelled
    batch, reaching the trunk iff the information loss does."""
    real, latent = _real(8), _latent(8)
    labelled = (_real(6, seed=9), torch.tensor([0, 2, 1, -1, 2, 0]))
    kw = dict(lambda_cat=0.0, lambda_cont=0.0, info_trains_trunk=info_trains_trunk)
    _, D_on, terms = _grads_of_step(_config(lambda_sup=1.5, **kw), real, latent, labelled)
    _, D_off, _ = _grads_of_step(_config(lambda_sup=0.0, **kw), real, latent, labelled)

    _, D = _fresh(_config(**kw))
    h = D.trunk(labelled[0])
    logits = D.q_head(h if info_trains_trunk else h.detach()).cat_logits[0]
    loss = SupervisedLoss(1.5)(logits, labelled[1])["Loss/Q/sup"]
    assert terms["Loss/Q/sup"].item() == pytest.approx(loss.item(), rel=1e-5)
    got = _difference(D_on, D_off)
    _assert_grads(got, _autograd(loss, D))
    assert any(got[n].abs().sum() > 0 for n in got if n.startswith("trunk")) == info_trains_trunk


def _symmetric_real(n: int) -> torch.Tensor:
    """Crops unchanged by 90-degree rotations and flips (rings around the centre), of two kinds."""
    r = torch.arange(16, dtype=torch.float32) - 7.5
    radius = (r[:, None] ** 2 + r[None, :] ** 2).sqrt()
    g = torch.Generator().manual_seed(4)
    out = []
    for i in range(n):
        width = 2.0 + 4.0 * torch.rand((), generator=g)
        ring = torch.exp(-((radius - width) ** 2) / 2) if i % 2 else torch.exp(-(radius**2) / (2 * width))
        out.append(ring * 1.6 - 0.8)
    return torch.stack(out)[:, None]


@pytest.mark.parametrize(("info_trains_trunk", "want_q_real"), [(True, False), (True, True), (False, True)])
def test_pair_mi_gradient_reaches_both_views(info_trains_trunk, want_q_real):
    """The IIC term's share of D's gradient is that of -lambda I(c1; c2) through both views. On
    crops that rotations and flips leave unchanged the two views are the crop itself, so the
    term's gradient is that of PairMILoss(logits, logits), both arguments attached."""
    augment = AugmentConfig(rot90=True, flip=True, shift=0)
    real, latent = _symmetric_real(8), _latent(8)
    assert torch.equal(augment_batch(real, augment, torch.Generator().manual_seed(0)), real)  # the premise
    kw = dict(
        diff_augment=augment,
        lambda_cat=0.0,
        lambda_cont=0.0,
        info_trains_trunk=info_trains_trunk,
        pair_mi_entropy=0.7,
    )
    (_, D_on, terms), (_, D_off, terms_off) = (
        _grads_of_step(
            _config(lambda_pair_mi=weight, **kw),
            real,
            latent,
            want_q_real=want_q_real,
            generator=torch.Generator().manual_seed(1),
        )
        for weight in (2.0, 0.0)
    )
    assert "Loss/Q/pair_mi" in terms and "Loss/Q/pair_mi" not in terms_off

    _, D = _fresh(_config(**kw))
    h1, h2 = D.trunk(real), D.trunk(real)
    if not info_trains_trunk:
        h1, h2 = h1.detach(), h2.detach()
    loss = PairMILoss(2.0, 0.7)(D.q_head(h1).cat_logits[0], D.q_head(h2).cat_logits[0])["Loss/Q/pair_mi"]
    assert terms["Loss/Q/pair_mi"].item() == pytest.approx(loss.item(), rel=1e-5)
    got = _difference(D_on, D_off)
    _assert_grads(got, _autograd(loss, D))
    assert any(got[n].abs().sum() > 0 for n in got if n.startswith("trunk")) == info_trains_trunk


def test_pair_mi_with_neighbours_pairs_each_crop_with_its_partner():
    """``partner`` (each crop's neighbour, train.pair_neighbours) is the IIC term's second view: the
    term and its gradient are those of PairMILoss(Q(real), Q(partner)), not of two views of real."""
    augment = AugmentConfig(rot90=True, flip=True, shift=0)
    real, latent = _symmetric_real(8), _latent(8)
    partner = real[[1, 0, 3, 2, 5, 4, 7, 6]] * 0.9  # other crops (still unchanged by the views)
    kw = dict(diff_augment=augment, lambda_cat=0.0, lambda_cont=0.0, pair_mi_entropy=0.7)
    (_, D_on, terms), (_, D_off, _) = (
        _grads_of_step(
            _config(lambda_pair_mi=w, **kw), real, latent, generator=torch.Generator().manual_seed(1),
            partner=partner,
        )
        for w in (1.5, 0.0)
    )  # fmt: skip
    _, D = _fresh(_config(**kw))
    loss = PairMILoss(1.5, 0.7)(
        D.q_head(D.trunk(real)).cat_logits[0], D.q_head(D.trunk(partner)).cat_logits[0]
    )
    assert terms["Loss/Q/pair_mi"].item() == pytest.approx(loss["Loss/Q/pair_mi"].item(), rel=1e-5)
    _assert_grads(_difference(D_on, D_off), _autograd(loss["Loss/Q/pair_mi"], D))


def test_q_real_only_when_asked():
    G, D, step = _setup(_config())
    terms, q_real = step(_real(8), _latent(8))
    assert q_real is None
    terms, q_real = step(_real(8), _latent(8), want_q_real=True)
    assert q_real.cat_logits[0].shape == (8, 3) and q_real.cont_mu.shape == (8, 2)
    assert q_real.cont_log_sigma.shape == (8, 2) and not q_real.cont_mu.requires_grad
