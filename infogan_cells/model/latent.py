"""Sampling the latent space described by a :class:`~infogan_cells.config.LatentSpec`.

A latent sample is noise ``z ~ N(0, 1)``, one index per categorical code, and continuous codes
``c ~ U(-r, r)``. The generator's input is their concatenation with the categorical indices
one-hot encoded (:func:`to_input`).

Two ways to draw: :func:`sample_latent` draws a batch from one ``torch.Generator`` on its own
device (training), :func:`sample_latent_by_seed` draws each sample from a counter-based stream
keyed by its own seed, so that sample ``k`` is the same whatever the batch it is drawn in
(synthesis: the seed is the sample's identity), with no Python call per sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from infogan_cells.config import LatentSpec

__all__ = ["Latent", "LatentSpec", "sample_latent", "sample_latent_by_seed", "to_input", "latent_grid"]


@dataclasses.dataclass
class Latent:
    """A batch of latent samples.

    z : (B, z_dim) float; cat : (B, n_codes) int64 category per categorical code;
    cont : (B, n_continuous) float in [-r, r].
    """

    z: torch.Tensor
    cat: torch.Tensor
    cont: torch.Tensor

    def __len__(self) -> int:
        return self.z.shape[0]

    def to(self, device: torch.device | str) -> Latent:
        return Latent(self.z.to(device), self.cat.to(device), self.cont.to(device))


def to_input(spec: LatentSpec, latent: Latent) -> torch.Tensor:
    """The generator's input (B, spec.input_dim): z, one-hot categorical codes, continuous codes."""
    parts = [latent.z]
    for j, k in enumerate(spec.categorical):
        parts.append(F.one_hot(latent.cat[:, j], k).to(latent.z.dtype))
    parts.append(latent.cont.to(latent.z.dtype))
    return torch.cat(parts, dim=1)


def _draw_cat(
    spec: LatentSpec, n: int, generator: torch.Generator, cat_probs: Sequence[torch.Tensor] | None
) -> torch.Tensor:
    dev = generator.device
    cols = []
    for j, k in enumerate(spec.categorical):
        if cat_probs is not None and cat_probs[j] is not None:
            # inverse CDF: no host sync on any device (torch.multinomial checks its input on the host)
            p = torch.as_tensor(cat_probs[j], dtype=torch.float32, device=dev)
            cdf = torch.cumsum(p / p.sum(), 0)
            u = torch.rand(n, generator=generator, device=dev)
            cols.append(torch.searchsorted(cdf, u, right=True).clamp_(max=k - 1))
        else:
            cols.append(torch.randint(k, (n,), generator=generator, device=dev))
    return torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.long, device=dev)


def sample_latent(
    spec: LatentSpec,
    n: int,
    *,
    generator: torch.Generator,
    cat_probs: Sequence[torch.Tensor] | None = None,
    truncation: float = 1.0,
    device: torch.device | str | None = None,
) -> Latent:
    """Draw ``n`` samples from ``generator``, on the generator's device (then moved to ``device``
    when one is given).

    ``cat_probs`` gives each categorical code's prior (default uniform; a tensor on any device);
    ``truncation`` scales z. Training draws on its own device with a generator there, so a step
    makes no host copy and no host sync.
    """
    dev = generator.device
    z = torch.randn(n, spec.z_dim, generator=generator, device=dev)
    if truncation != 1.0:
        z = z * truncation
    cat = _draw_cat(spec, n, generator, cat_probs)
    r = spec.continuous_range
    cont = (torch.rand(n, spec.n_continuous, generator=generator, device=dev) * 2 - 1) * r
    latent = Latent(z, cat, cont)
    return latent if device is None else latent.to(device)


# --------------------------------------------------------------------------------------
# Per-sample streams (synthesis): a counter-based generator keyed by each sample's seed

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2**64 / golden ratio)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (uint64 in, uint64 out; arithmetic modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seed_uniforms(seeds: np.ndarray, n: int) -> np.ndarray:
    """(len(seeds), n) float64 uniforms in (0, 1): number ``i`` of sample ``s`` is a function of
    ``(seeds[s], i)`` alone (SplitMix64 keyed by the mixed seed, counter ``i``), computed for all
    samples at once with no Python loop."""
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.size and seeds.min() < 0:
        raise ValueError("seeds must be >= 0")
    with np.errstate(over="ignore"):
        key = _mix64(seeds.astype(np.uint64) + _GAMMA)
        ctr = np.arange(1, n + 1, dtype=np.uint64) * _GAMMA
        bits = _mix64(key[:, None] + ctr[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def sample_latent_by_seed(
    spec: LatentSpec,
    seeds: Sequence[int] | np.ndarray,
    *,
    cat_probs: Sequence[torch.Tensor] | None = None,
    truncation: float = 1.0,
    device: torch.device | str = "cpu",
) -> Latent:
    """One sample per seed: sample ``k`` depends on ``seeds[k]`` alone, never on the batch it is
    drawn in, and the whole batch is drawn with array operations (no Python call per sample).

    Each seed keys a counter-based stream (:func:`seed_uniforms`): the first ``2 * ceil(z_dim / 2)``
    numbers give z by the Box-Muller transform, then one number per categorical code (inverse
    CDF of its prior, uniform by default), then one per continuous code (uniform on [-r, r]).
    """
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    n_z = 2 * ((spec.z_dim + 1) // 2)
    n_cat, n_cont = len(spec.categorical), spec.n_continuous
    u = seed_uniforms(seeds, n_z + n_cat + n_cont)
    u1, u2 = u[:, 0:n_z:2], u[:, 1:n_z:2]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    z = np.empty((len(seeds), n_z), np.float64)
    z[:, 0::2], z[:, 1::2] = radius * np.cos(angle), radius * np.sin(angle)
    z = z[:, : spec.z_dim] * truncation
    cat = np.zeros((len(seeds), n_cat), np.int64)
    for j, k in enumerate(spec.categorical):
        uj = u[:, n_z + j]
        if cat_probs is not None and cat_probs[j] is not None:
            p = np.asarray(torch.as_tensor(cat_probs[j]).cpu(), dtype=np.float64)
            cat[:, j] = np.minimum(np.searchsorted(np.cumsum(p / p.sum()), uj, side="right"), k - 1)
        else:
            cat[:, j] = np.minimum((uj * k).astype(np.int64), k - 1)
    cont = (u[:, n_z + n_cat :] * 2 - 1) * spec.continuous_range
    return Latent(
        torch.from_numpy(z.astype(np.float32)),
        torch.from_numpy(cat),
        torch.from_numpy(cont.astype(np.float32)),
    ).to(device)


def latent_grid(
    spec: LatentSpec,
    *,
    n_steps: int = 8,
    code: int = 0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Latent:
    """A fixed grid for sample sheets: rows = categories of the first categorical code, columns =
    a sweep of continuous code ``code`` from -r to r; one z per row, other codes at 0.

    Returns ``n_rows * n_steps`` samples in row-major order.
    """
    n_rows = spec.categorical[0] if spec.categorical else 1
    z = torch.randn(n_rows, 1, spec.z_dim, generator=generator).expand(n_rows, n_steps, spec.z_dim)
    cat = torch.zeros(n_rows, n_steps, len(spec.categorical), dtype=torch.long)
    if spec.categorical:
        cat[:, :, 0] = torch.arange(n_rows)[:, None]
    cont = torch.zeros(n_rows, n_steps, spec.n_continuous)
    if spec.n_continuous:
        cont[:, :, code % spec.n_continuous] = torch.linspace(-1, 1, n_steps) * spec.continuous_range
    n = n_rows * n_steps  # explicit: -1 cannot be inferred for an empty (no categorical code) block
    return Latent(
        z.reshape(n, spec.z_dim).clone(),
        cat.reshape(n, len(spec.categorical)),
        cont.reshape(n, spec.n_continuous),
    ).to(device)
