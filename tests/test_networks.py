"""Networks and checkpoints: shapes, the public ports' BatchNorm bug, seeding, save-then-load identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infogan_cells.config import LatentSpec, TrainConfig
from infogan_cells.model.checkpoint import load_discriminator, load_generator, save_network
from infogan_cells.model.latent import sample_latent, to_input
from infogan_cells.model.networks import Discriminator, Generator, init_weights
from infogan_cells.training.step import build_networks

SPEC = LatentSpec(z_dim=6, categorical=[4], n_continuous=2)


@pytest.mark.parametrize(("size", "channels"), [(16, 1), (32, 2), (32, 3), (64, 5)])
def test_shapes_and_range(size, channels):
    G = Generator(SPEC, img_size=size, channels=channels, width=4)
    D = Discriminator(SPEC, img_size=size, channels=channels, width=4)
    x = G(to_input(SPEC, sample_latent(SPEC, 3, generator=torch.Generator().manual_seed(0))))
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1
    logit, q = D(x)
    assert logit.shape == (3,)
    assert [t.shape for t in q.cat_logits] == [(3, 4)]
    assert q.cont_mu.shape == q.cont_log_sigma.shape == (3, 2)


def test_bad_image_size_raises():
    with pytest.raises(ValueError, match="power of two"):
        Generator(SPEC, img_size=40)


def test_batchnorm_keeps_default_eps_and_momentum():
    """Public ports passed 0.1 where eps goes (BatchNorm2d(c, 0.1)): eps must stay 1e-5."""
    for net in build_networks(
        SPEC, 32, 3, TrainConfig(latent=SPEC, g_channels=8, d_channels=8), torch.Generator().manual_seed(0)
    ):
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns
        assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)


def test_spectral_norm_discriminator_has_no_batchnorm():
    D = Discriminator(SPEC, img_size=16, channels=1, width=4, spectral_norm=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.trunk.modules())


def test_build_networks_is_seeded_and_leaves_the_global_rng_alone():
    config = TrainConfig(latent=SPEC, g_channels=4, d_channels=4, spectral_norm=True)
    state = torch.get_rng_state()
    a = build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    b = build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(3))
    c = build_networks(SPEC, 16, 1, config, torch.Generator().manual_seed(4))
    for x, y, z in zip(a, b, c, strict=True):
        sx, sy, sz = x.state_dict(), y.state_dict(), z.state_dict()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
        assert any(not torch.equal(sx[k], sz[k]) for k in sx)


def test_generator_batch_of_two_equals_two_batches_of_one():
    G = Generator(SPEC, img_size=16, channels=1, width=4).eval()
    init_weights(G, generator=torch.Generator().manual_seed(0))
    v = to_input(SPEC, sample_latent(SPEC, 2, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        both = G(v)
        one = torch.cat([G(v[:1]), G(v[1:])])
    torch.testing.assert_close(both, one, rtol=1e-5, atol=1e-6)


def test_save_then_load_gives_identical_outputs(tmp_path):
    config = TrainConfig(latent=SPEC, g_channels=4, d_channels=4)
    G, D = build_networks(SPEC, 16, 2, config, torch.Generator().manual_seed(0))
    # train mode once, so BatchNorm running statistics are not their initial values
    G(to_input(SPEC, sample_latent(SPEC, 8, generator=torch.Generator().manual_seed(1))))
    D(torch.rand(8, 2, 16, 16))
    G_ema = Generator(**G.kwargs)
    G_ema.load_state_dict(G.state_dict())
    with torch.no_grad():
        for p in G_ema.parameters():
            p.mul_(0.5)
    path = tmp_path / "net.pt"
    save_network(path, G=G, D=D, G_ema=G_ema, meta={"channel_names": ["a", "b"], "img_size": 16})
    v = to_input(SPEC, sample_latent(SPEC, 5, generator=torch.Generator().manual_seed(2)))
    x = torch.rand(5, 2, 16, 16) * 2 - 1
    G.eval(), D.eval(), G_ema.eval()
    G2, spec, meta = load_generator(path, ema=False)
    G3, _, _ = load_generator(path, ema=True)
    D2, _, _ = load_discriminator(path)
    assert spec == SPEC and meta["channel_names"] == ["a", "b"]
    with torch.no_grad():
        assert torch.equal(G(v), G2(v))
        assert torch.equal(G_ema(v), G3(v))
        (l1, q1), (l2, q2) = D(x), D2(x)
        assert torch.equal(l1, l2) and torch.equal(q1.cat_logits[0], q2.cat_logits[0])
        assert torch.equal(q1.cont_mu, q2.cont_mu)
    payload = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert payload["format"] == "infogan-cells/network"
