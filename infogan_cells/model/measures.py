"""Label-free, differentiable measures of an image batch: what a pinned continuous code reads.

A continuous code is *pinned* to a measure (``train.code_measures``) when Q reads that code from
the measure alone, through a line of fixed slope: ``mu = r / sqrt(3) * (m - mean) / sd - offset_k``,
with the mean and sd of the measure over the real crops and ``offset_k`` the level typical of the
category k that Q sees (learnt). The information loss then pays G only for making the measure
follow the code inside each kind of cell, so the code becomes a slider of that measure (c = -r and
c = +r about 1.7 sd of the real cells' spread below and above its kind's level). The slope is not
learnt on purpose: it would go to zero while G ignores the code, and with it G's reason to obey.

Measures, each of one channel ``v = (x + 1) / 2`` in [0, 1], its background taken as the channel's
median over the image; they assume a stain brighter than its background (fluorescence, ink on
black), not a brightfield stain darker than it:

* ``total``: the stain above the background, summed over the image, per pixel (the cell's content
  of that stain: its DNA for a DNA channel);
* ``log_total``: its logarithm (DNA content doubles through the cell cycle: one even step);
* ``slant``: the shear of the stain above the background, columns moved per row (its second
  moments' covariance over the rows' variance), positive when the top leans right, as
  :func:`infogan_cells.analysis.morphology.measure_morphology` measures a mask's slant.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from infogan_cells.config.training import MEASURES
from infogan_cells.errors import ConfigError


def parse(entry: str, names: list[str], key: str) -> tuple[str, int]:
    """``'<measure>:<channel>'`` (or ``'<measure>'`` for crops of one channel) -> (measure, channel
    index among ``names``); a ConfigError names ``key``, the measures known and the crops' channels
    when either part is not found."""
    kind, sep, channel = str(entry).partition(":")
    if kind not in MEASURES:
        raise ConfigError(
            f"config key '{key}': {entry!r} is not <measure>:<channel> with a measure among {', '.join(MEASURES)}"
        )
    if not sep and len(names) == 1:
        return kind, 0
    if channel not in names:
        which = f"channel {channel!r} is" if sep else "no channel is named: it"
        raise ConfigError(f"config key '{key}': {which} not among the crops' channels ({', '.join(names)})")
    return kind, names.index(channel)


def _above_background(x: torch.Tensor, channel: int) -> torch.Tensor:
    v = (x[:, channel].float() + 1) / 2  # (B, H, W) in [0, 1]
    background = v.flatten(1).median(dim=1).values
    return torch.relu(v - background[:, None, None])


def measure(x: torch.Tensor, kind: str, channel: int) -> torch.Tensor:
    """The measure ``kind`` of channel ``channel`` of images ``x`` (B, C, H, W) in [-1, 1]: (B,), fp32."""
    ink = _above_background(x, channel)
    if kind == "total":
        return ink.mean(dim=(1, 2))
    if kind == "log_total":
        return torch.log(ink.mean(dim=(1, 2)) + 1e-3)
    if kind == "slant":
        _, H, W = ink.shape
        rows = torch.arange(H, dtype=ink.dtype, device=ink.device)[None, :, None]
        cols = torch.arange(W, dtype=ink.dtype, device=ink.device)[None, None, :]
        mass = ink.sum(dim=(1, 2)).clamp_min(1e-6)
        r0 = (ink * rows).sum(dim=(1, 2)) / mass
        c0 = (ink * cols).sum(dim=(1, 2)) / mass
        dr, dc = rows - r0[:, None, None], cols - c0[:, None, None]
        s_rr = (ink * dr * dr).sum(dim=(1, 2)) / mass
        s_rc = (ink * dr * dc).sum(dim=(1, 2)) / mass
        return -s_rc / s_rr.clamp_min(1e-6)  # rows grow downwards: a top leaning right has s_rc < 0
    raise ValueError(f"unknown measure {kind!r}: expected one of {', '.join(MEASURES)}")


class PinnedCodes(torch.nn.Module):
    """The measures that pinned continuous codes read, and the fixed line from measure to code.

    ``codes``: one (measure, channel) per pinned code, or None for a code Q reads freely.
    ``forward(x)`` gives the codes' means (B, n_pinned) on the code's scale; :meth:`calibrate`
    sets the mean and sd of each measure from real crops (buffers: they travel with checkpoints).
    """

    def __init__(self, codes: list, code_range: float, n_categories: int = 0):
        super().__init__()
        self.codes = [tuple(c) if c is not None else None for c in codes]
        self.pinned = [j for j, c in enumerate(self.codes) if c is not None]
        self.scale = float(code_range) / 3**0.5  # the sd of U(-r, r)
        n = len(self.pinned)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("sd", torch.ones(n))
        # each category's own level of each measure, learnt by Q (code units): the code sets the
        # measure relative to the level typical of its kind of cell, not to all cells' mean
        self.offset = torch.nn.Parameter(torch.zeros(n, max(n_categories, 1)))

    def relative(self, readout: torch.Tensor, cat_logits: torch.Tensor | None) -> torch.Tensor:
        """``readout`` (B, n_pinned) less the level of the category Q sees (its probabilities,
        detached: the categories are not trained to carry the codes)."""
        if cat_logits is None:
            return readout - self.offset[:, 0]
        return readout - torch.softmax(cat_logits.detach().float(), dim=1) @ self.offset.T

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([measure(x, *self.codes[j]) for j in self.pinned], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.mean) / self.sd * self.scale

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Mean and sd of each measure over real images, given as batches (B, C, H, W) in [-1, 1]."""
        values = torch.cat([self.raw(x) for x in batches])
        self.mean.copy_(values.mean(dim=0))
        self.sd.copy_(values.std(dim=0).clamp_min(1e-6))
