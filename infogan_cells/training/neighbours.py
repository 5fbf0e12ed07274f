"""Each crop's nearest crops, the positives of the IIC term when ``train.pair_neighbours`` is set
(SCAN, arXiv 2005.12320): first in pixels, then, with ``train.pair_neighbours_refresh``, in D's own
features, which once trained tell kinds apart far better than pixels do.

Both compare unit vectors by cosine similarity, a chunk of rows at a time against a pool of
candidates: every crop, or :data:`NEIGHBOUR_POOL` of them drawn at random in larger sets.
"""

from __future__ import annotations

import torch

from infogan_cells.model.augment import to_float
from infogan_cells.training.averaging import real_probe

#: Side (px) the crops are shrunk to before they are compared in pixels.
NEIGHBOUR_SIDE = 16
#: Neighbours are searched among at most this many crops (drawn at random in larger sets), so the
#: search stays a few matrix products: 50,000 crops of 3 channels take about 30 s on 2 CPU cores.
NEIGHBOUR_POOL = 50_000
#: D's features are projected to at most this many dimensions (a fixed Gaussian projection, which
#: keeps cosine similarities close) before they are compared.
FEATURE_DIMS = 512


def nearest_neighbours(
    images: torch.Tensor, k: int, generator: torch.Generator | None = None, chunk: int = 2048
) -> torch.Tensor:
    """Each crop's ``k`` nearest other crops in pixels, (N, k) int64 on the crops' device, nearest first.

    Crops (N, C, H, W) uint8 are shrunk to :data:`NEIGHBOUR_SIDE` px (area mean), each centred on its
    own mean and scaled to unit length; ``generator`` draws the candidate pool in a set larger than
    :data:`NEIGHBOUR_POOL`. A crop is never its own neighbour.
    """
    n = _check(images, k)
    feats = torch.empty((n, images.shape[1] * NEIGHBOUR_SIDE**2), device=images.device)
    for a in range(0, n, chunk):
        x = torch.nn.functional.adaptive_avg_pool2d(images[a : a + chunk].float(), NEIGHBOUR_SIDE).flatten(1)
        feats[a : a + chunk] = x - x.mean(1, keepdim=True)
    return _nearest(feats, k, generator, chunk)


@torch.no_grad()
def feature_neighbours(
    D: torch.nn.Module,
    images: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    chunk: int = 2048,
) -> torch.Tensor:
    """Each crop's ``k`` nearest other crops in D's features, (N, k) int64, nearest first.

    The features are D's trunk output (hand-chosen numbers included) on the crops as they are,
    from a copy of D whose BatchNorm statistics are those of the real crops (D itself is left
    untouched), each feature centred over the crops, projected to at most :data:`FEATURE_DIMS`
    dimensions, and compared by cosine similarity.
    """
    n = _check(images, k)
    probe = real_probe(D, images, batch_size)
    feats = torch.cat(
        [
            probe.trunk(to_float(images[a : a + batch_size])).flatten(1).float()
            for a in range(0, n, batch_size)
        ]
    )
    feats = feats - feats.mean(0, keepdim=True)
    if feats.shape[1] > FEATURE_DIMS:
        proj = torch.randn(feats.shape[1], FEATURE_DIMS, generator=torch.Generator().manual_seed(0))
        feats = feats @ proj.to(feats.device)
    return _nearest(feats, k, generator, chunk)


def _check(images: torch.Tensor, k: int) -> int:
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"nearest neighbours need at least 2 crops, got {n}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return n


def _nearest(feats: torch.Tensor, k: int, generator: torch.Generator | None, chunk: int) -> torch.Tensor:
    """Top-``k`` cosine neighbours of each row of ``feats`` (N, F) among the pool, never itself."""
    n, dev = feats.shape[0], feats.device
    k = min(k, n - 1)
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-6)
    pool = torch.arange(n, device=dev)
    if n > NEIGHBOUR_POOL:
        pool = torch.randperm(n, generator=generator, device=generator.device if generator else None)
        pool = pool[:NEIGHBOUR_POOL].to(dev)
    candidates = feats[pool].T.contiguous()
    out = torch.empty((n, k), dtype=torch.int64, device=dev)
    for a in range(0, n, chunk):
        sim = feats[a : a + chunk] @ candidates
        sim[pool[None, :] == torch.arange(a, a + len(sim), device=dev)[:, None]] = -2.0
        out[a : a + chunk] = pool[sim.topk(k, dim=1).indices]
    return out
