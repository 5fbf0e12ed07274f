"""What a training run holds on its device, and one turn of its loop.

``train()`` (:mod:`infogan_cells.training.loop`), the GPU check and the tests build the
networks and take steps through these two functions, so they measure and test the loop that
trains.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from infogan_cells.config import TrainConfig
from infogan_cells.model.networks import Discriminator, Generator
from infogan_cells.training.averaging import effective_prior, ema_update, update_prior
from infogan_cells.training.data import Batches
from infogan_cells.training.step import InfoGANStep, build_networks, build_optimizers


@dataclasses.dataclass
class Parts:
    """G, D+Q, the EMA of G (None with ``ema_beta`` 0), their optimisers and the step."""

    G: Generator
    D: Discriminator
    G_ema: Generator | None
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    step: InfoGANStep


def build_parts(
    config: TrainConfig,
    img_size: int,
    channels: int,
    device: torch.device,
    generator: torch.Generator,
    channel_names: list[str] | None = None,
) -> Parts:
    """The networks initialised from ``generator`` (CPU), moved to ``device`` (channels_last on
    CUDA), the EMA copy, fused Adam for each player and the step."""
    G, D = build_networks(config.latent, img_size, channels, config, generator, channel_names)
    G.to(device)
    D.to(device)
    if device.type == "cuda":
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if config.ema_beta > 0 else None
    opt_G, opt_D = build_optimizers(G, D, config, device)
    return Parts(G, D, G_ema, opt_G, opt_D, InfoGANStep(G, D, opt_G, opt_D, config.latent, config, device))


def advance(
    parts: Parts,
    batches: Batches,
    prior: list[torch.Tensor],
    config: TrainConfig,
    *,
    n_steps: int,
    learned: bool,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One step: draw the batches, update D+Q then G, the EMA and (learned prior) ``prior`` in place.

    ``n_steps`` counts the steps before this one (the EMA's warm-up); ``learned``: latents follow
    the learned prior (after its warm-up). Every draw and update stays on the device: no host sync.
    """
    real, supervised, partner = batches.real()
    latent = batches.latent(effective_prior(prior, config.prior_floor) if learned else None)
    want_q_real = config.prior == "learned"
    terms, q_real = parts.step(
        real, latent, supervised, want_q_real=want_q_real, generator=generator, partner=partner
    )
    if parts.G_ema is not None:
        ema_update(parts.G_ema, parts.G, min(config.ema_beta, (1 + n_steps) / (10 + n_steps)))
    if q_real is not None:
        update_prior(prior, q_real, config.prior_momentum)
    return terms
