"""Tiny InfoGAN steps for the step tests: 16 x 16 px, one channel, networks 4-8 wide."""

from __future__ import annotations

import torch

from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig
from infogan_cells.model.latent import Latent, sample_latent
from infogan_cells.training.step import InfoGANStep, build_networks, build_optimizers

SPEC = LatentSpec(z_dim=4, categorical=[3], n_continuous=2)
CPU = torch.device("cpu")
OFF = AugmentConfig(rot90=False, flip=False, shift=0)


def _config(**kw) -> TrainConfig:
    """A tiny config; the differentiable augmentation and the IIC term off unless asked."""
    small = dict(latent=SPEC, batch_size=8, g_channels=8, d_channels=8)
    return TrainConfig(**{**small, "diff_augment": OFF, "lambda_pair_mi": 0.0, "precision": "fp32", **kw})


def _setup(config: TrainConfig, seed: int = 0):
    G, D = build_networks(config.latent, 16, 1, config, torch.Generator().manual_seed(seed))
    opt_G, opt_D = build_optimizers(G, D, config, CPU)
    return G, D, InfoGANStep(G, D, opt_G, opt_D, config.latent, config, CPU)


def _real(n: int, seed: int = 1) -> torch.Tensor:
    """Real-like crops in [-1, 1]: a bright square on a dark background, at a few places."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, 16, 16), -0.8)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(2, 9, (2,), generator=g))
        x[i, :, r : r + 6, c : c + 6] = 0.6
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def _latent(n: int, seed: int = 2, spec: LatentSpec = SPEC) -> Latent:
    return sample_latent(spec, n, generator=torch.Generator().manual_seed(seed))


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def _fresh(config: TrainConfig):
    return build_networks(config.latent, 16, 1, config, torch.Generator().manual_seed(0))
