"""Splitting an oversized category in two (``train.split_largest``), a label-free repair of the
local minimum that mutual-information clustering falls into on classes of similar size: two
kinds share one category while a third is cut in two by style (on MNIST: 5 and 8 in one, the 6s
in two categories of half the size each).

At every ``split_every`` of training Q assigns the real crops (D's BatchNorm set by them, on a
copy). When the largest category holds more than ``split_largest`` (r) times the mean share, or
the smallest less than 1/r of it, the smallest category is given up and the largest is cut in two
along the main axis of variation of its crops in Q's hidden layer: the two rows of Q's last layer
become the old row plus and minus a direction that sends each half of its crops to one of them
(the mean of the two rows is the old row, so no other category's crops move). The smallest
category's crops go to their next choice, and G, paid to draw what Q calls each category, learns
the new one. The same repair as k-means' re-seeding of a lost cluster from a populous one, made
along the data's own axis.
"""

from __future__ import annotations

import torch

from infogan_cells.model.augment import to_float
from infogan_cells.model.networks import Discriminator
from infogan_cells.training.averaging import real_probe

#: At most this many crops (every n-th of a larger set) are assigned to measure the categories.
SPLIT_POOL = 20_000
#: The logit gap, at the means of the two halves, between the two categories of a split.
SPLIT_MARGIN = 3.0


@torch.no_grad()
def hidden_and_categories(
    D: Discriminator, images: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q's hidden layer (N, hidden) and first code's category (N,) of ``images`` (N, C, H, W) uint8
    (at most :data:`SPLIT_POOL` of them, evenly strided), from a copy of D whose BatchNorm
    statistics are set by the crops; D itself is left as it was."""
    step = max(1, -(-len(images) // SPLIT_POOL))
    images = images[::step]
    probe = real_probe(D, images, batch_size)
    hidden = torch.cat(
        [
            probe.q_net[:-1](probe.trunk(to_float(images[a : a + batch_size]))).float()
            for a in range(0, len(images), batch_size)
        ]
    )
    k = probe.spec.categorical[0]
    logits = probe.q_net[-1](hidden)[:, :k]
    return hidden, logits.argmax(1)


@torch.no_grad()
def split_largest(
    D: Discriminator,
    opt: torch.optim.Optimizer | None,
    hidden: torch.Tensor,
    categories: torch.Tensor,
    ratio: float,
) -> tuple[int, int] | None:
    """Cut the largest category in two when it holds more than ``ratio`` times the mean share of
    ``categories`` or the smallest less than 1 / ``ratio`` of it (see the module docstring);
    returns (largest, smallest), or None when the sizes are within those bounds. ``opt``'s
    moments for the two rows are reset."""
    k = D.spec.categorical[0]
    shares = torch.bincount(categories, minlength=k).float() / len(categories)
    big, small = int(shares.argmax()), int(shares.argmin())
    if shares[big] <= ratio / k and shares[small] >= 1 / (ratio * k):
        return None
    h = hidden[categories == big]
    centre = h.mean(0)
    axis = torch.linalg.svd(h - centre, full_matrices=False).Vh[0]
    side = (h - centre) @ axis > 0
    if side.all() or not side.any():
        return None
    m1, m2 = h[side].mean(0), h[~side].mean(0)
    u, mid = m1 - m2, (m1 + m2) / 2
    scale = SPLIT_MARGIN / (u @ u / 2).clamp_min(1e-12)  # logit gap +-SPLIT_MARGIN at m1 and m2
    layer = D.q_net[-1]
    w, b = layer.weight[big].clone(), layer.bias[big].clone()
    half = scale * u / 2
    layer.weight[big], layer.bias[big] = w + half, b - half @ mid
    layer.weight[small], layer.bias[small] = w - half, b + half @ mid
    if opt is not None:
        for p in (layer.weight, layer.bias):
            for value in opt.state.get(p, {}).values():
                if value.dim() > 0 and value.shape == p.shape:
                    value[[big, small]] = 0
    return big, small
