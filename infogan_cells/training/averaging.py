"""What the loop keeps averaged beside the weights: G's EMA, D's BatchNorm statistics on real
crops (precise BN), and the learned category prior.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

from infogan_cells.model.augment import to_float
from infogan_cells.model.networks import Discriminator, QOutput

log = logging.getLogger(__name__)


@torch.no_grad()
def ema_update(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """Move G_ema's weights ``1 - beta`` of the way to G's; copy G's BatchNorm statistics."""
    ema_params, params = list(G_ema.parameters()), list(G.parameters())
    if len(ema_params) != len(params):
        raise ValueError("ema_update: G_ema and G have different parameters")
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)  # one fused update on CUDA
    torch._foreach_copy_(list(G_ema.buffers()), list(G.buffers()))


@torch.no_grad()
def recalibrate_batchnorm(
    D: Discriminator,
    images: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    max_images: int = 16384,
) -> None:
    """Set D's BatchNorm running statistics to those of real crops (uint8 (N, C, H, W) on D's device).

    During training they average real and generated batches, the last forward of each step being
    G's step on fakes; Q in eval mode (the analysis, the learned mix) is applied to real crops, so
    it should normalise with real statistics ("precise BN"). Batches of ``batch_size`` in a random
    order from ``generator`` (CPU), at most ``max_images`` crops; cumulative averages.
    """
    bns = [m for m in D.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    was_training = D.training
    D.train()
    order = torch.randperm(len(images), generator=generator)[:max_images].to(images.device)
    step = max(2, batch_size)
    for i in range(0, len(order) - 1, step):  # BatchNorm needs 2+ images
        idx = order[i : i + step]
        if len(idx) >= 2:
            D.trunk(to_float(images[idx]))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    D.train(was_training)


def effective_prior(prior: list[torch.Tensor], floor: float) -> list[torch.Tensor]:
    """The running estimate mixed with the uniform floor: every category keeps >= ``floor``."""
    out = []
    for p in prior:
        k = p.numel()
        p = p.float().clamp_min(0)
        p = p / p.sum().clamp_min(1e-12)
        out.append(floor + (1 - k * floor) * p)
    return out


@torch.no_grad()
def update_prior(prior: list[torch.Tensor], q_real: QOutput, momentum: float) -> None:
    """Move each code's running prior toward the share of real crops Q puts in each category
    (one-hot counts: no host sync, unlike ``bincount``)."""
    for p, logits in zip(prior, q_real.cat_logits, strict=True):
        share = F.one_hot(logits.argmax(1), p.numel()).float().mean(0)
        p.mul_(momentum).add_(share, alpha=1 - momentum)


def real_probe(D: Discriminator, images: torch.Tensor, batch_size: int) -> Discriminator:
    """A copy of D in eval mode whose BatchNorm statistics are those of the real crops ``images``
    (uint8 (N, C, H, W) on D's device): for reading D's features or Q's categories mid-training
    without touching D."""
    probe = copy.deepcopy(D)
    recalibrate_batchnorm(probe, images, batch_size, torch.Generator().manual_seed(0))
    return probe.eval()
