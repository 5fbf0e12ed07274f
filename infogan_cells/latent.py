"""Sampling the latent space described by a :class:`~infogan_cells.config.LatentSpec`.

A latent sample is noise ``z ~ N(0, 1)``, one index per categorical code, and continuous codes
``c ~ U(-r, r)``. The generator's input is their concatenation with the categorical indices
one-hot encoded (:func:`to_input`).

Two ways to draw: :func:`sample_latent` draws a batch from one ``torch.Generator`` (training),
:func:`sample_latent_by_seed` draws each sample from its own seed, so that sample ``k`` is the
same whatever the batch it is drawn in (synthesis: the seed is the sample's identity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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


def _draw_cat(spec: LatentSpec, n: int, generator: torch.Generator,
              cat_probs: Sequence[torch.Tensor] | None) -> torch.Tensor:
    cols = []
    for j, k in enumerate(spec.categorical):
        if cat_probs is not None and cat_probs[j] is not None:
            p = torch.as_tensor(cat_probs[j], dtype=torch.float64).cpu()
            cols.append(torch.multinomial(p / p.sum(), n, replacement=True, generator=generator))
        else:
            cols.append(torch.randint(k, (n,), generator=generator))
    return torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.long)


def sample_latent(spec: LatentSpec, n: int, *, generator: torch.Generator,
                  cat_probs: Sequence[torch.Tensor] | None = None, truncation: float = 1.0,
                  device: torch.device | str = "cpu") -> Latent:
    """Draw ``n`` samples from one CPU ``generator`` (then move them to ``device``).

    ``cat_probs`` gives each categorical code's prior (default uniform); ``truncation`` scales z.
    Drawing on the CPU keeps a seed's stream the same on every device.
    """
    z = torch.randn(n, spec.z_dim, generator=generator) * truncation
    cat = _draw_cat(spec, n, generator, cat_probs)
    r = spec.continuous_range
    cont = (torch.rand(n, spec.n_continuous, generator=generator) * 2 - 1) * r
    return Latent(z, cat, cont).to(device)


def sample_latent_by_seed(spec: LatentSpec, seeds: Sequence[int], *,
                          cat_probs: Sequence[torch.Tensor] | None = None, truncation: float = 1.0,
                          device: torch.device | str = "cpu") -> Latent:
    """One sample per seed, each drawn from ``torch.Generator().manual_seed(seed)``.

    Sample ``k`` depends on ``seeds[k]`` alone, never on the batch it is drawn in.
    """
    parts = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        parts.append(sample_latent(spec, 1, generator=g, cat_probs=cat_probs, truncation=truncation))
    if not parts:
        return Latent(torch.zeros(0, spec.z_dim), torch.zeros(0, len(spec.categorical), dtype=torch.long),
                      torch.zeros(0, spec.n_continuous)).to(device)
    return Latent(torch.cat([p.z for p in parts]), torch.cat([p.cat for p in parts]),
                  torch.cat([p.cont for p in parts])).to(device)


def latent_grid(spec: LatentSpec, *, n_steps: int = 8, code: int = 0, generator: torch.Generator,
                device: torch.device | str = "cpu") -> Latent:
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
    return Latent(z.reshape(-1, spec.z_dim).clone(), cat.reshape(-1, len(spec.categorical)),
                  cont.reshape(-1, spec.n_continuous)).to(device)
