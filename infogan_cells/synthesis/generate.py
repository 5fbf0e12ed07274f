"""Images from a generator by seed: sample ``i`` is bit-identical whatever the batch, shard or
thread layout."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from infogan_cells.config import LatentSpec, SynthConfig
from infogan_cells.errors import InputError
from infogan_cells.model.augment import to_float, to_uint8
from infogan_cells.model.latent import Latent, sample_latent_by_seed, to_input
from infogan_cells.model.networks import Discriminator, Generator
from infogan_cells.synthesis.plan import Plan
from infogan_cells.synthesis.writers import DRAW_STRIDE, MAX_DRAWS, Batch

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Making images


def sample_latents(
    spec: LatentSpec, plan: Plan, config: SynthConfig, index: np.ndarray, draw: int = 0
) -> Latent:
    """The latent samples of global indices ``index``: z and codes from seed ``config.seed + k``
    (``+ draw * DRAW_STRIDE``), the first categorical code from :meth:`Plan.category`, grid codes
    from :meth:`Plan.grid`."""
    latent = sample_latent_by_seed(
        spec, config.seed + index + draw * DRAW_STRIDE, truncation=config.truncation
    )
    latent.cat[:, 0] = torch.from_numpy(plan.category(index))
    grid = plan.grid(index, spec.n_continuous)
    if grid is not None:
        latent.cont = torch.from_numpy(grid)
    return latent


def _passes(index: np.ndarray, micro_batch: int, *, pack: bool = False) -> list[np.ndarray]:
    """Which positions of ``index`` (increasing global indices) share each forward pass.

    Sample ``k`` always sits in row ``k % micro_batch`` of its pass. Without ``pack`` a pass is one
    micro-batch of global indices (``k // micro_batch``); with ``pack``, samples of different
    micro-batches whose rows do not collide share a pass, so that a sparse set of samples (the
    redraws of ``min_confidence``) takes as few passes as its most crowded row. Either way a row's
    result is the same (module docstring)."""
    if not pack:
        blocks = index // micro_batch
        return np.split(np.arange(len(index)), np.flatnonzero(np.diff(blocks)) + 1)
    rows = index % micro_batch
    order = np.argsort(rows, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(rows[order]) != 0])
    rank = np.empty(len(index), np.int64)
    rank[order] = np.arange(len(index)) - np.repeat(starts, np.diff(np.r_[starts, len(index)]))
    return [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1 if len(rank) else 0)]


def _aligned(
    net, x: torch.Tensor, index: np.ndarray, micro_batch: int, *, pack: bool = False
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``net``'s outputs for inputs ``x`` (B, ...) of the increasing global indices ``index``, one
    pass of ``micro_batch`` rows at a time (:func:`_passes`): sample ``k`` at row ``k % micro_batch``,
    zeros in the rows not asked for, so a sample's output never depends on the batch it was asked
    in (module docstring). Yields (positions in ``index``, their outputs)."""
    M = micro_batch
    for part in _passes(index, M, pack=pack):
        whole = len(part) == M and part[-1] - part[0] == M - 1 and index[part[0]] % M == 0
        if whole:
            with torch.no_grad():
                yield part, net(x[int(part[0]) : int(part[-1]) + 1])
            continue
        at = torch.from_numpy(index[part] % M).to(x.device)
        rows = torch.zeros(M, *x.shape[1:], dtype=x.dtype, device=x.device)
        rows[at] = x[torch.from_numpy(part).to(x.device)]
        with torch.no_grad():
            yield part, net(rows)[at]


def _in_order(parts: Iterator[tuple[np.ndarray, torch.Tensor]], n: int) -> torch.Tensor:
    """The outputs of :func:`_aligned` put back in the order of its ``index``."""
    out = None
    for part, y in parts:
        if out is None:
            out = torch.empty(n, *y.shape[1:], dtype=y.dtype, device=y.device)
        out[torch.from_numpy(part).to(y.device)] = y
    return out


def forward(
    G: Generator, x: torch.Tensor, index: np.ndarray, micro_batch: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """G's outputs (b, C, H, W) on ``device``, one micro-batch's share at a time, for the
    increasing global indices ``index`` with inputs ``x`` (B, D) (see :func:`_aligned`).
    The inputs go to the device once per call."""
    for _, y in _aligned(G, x.to(device), np.asarray(index, dtype=np.int64), micro_batch):
        yield y


def generate(
    G: Generator, x: torch.Tensor, index: np.ndarray, micro_batch: int, device: torch.device
) -> np.ndarray:
    """Images (B, H, W, C) uint8 of increasing global indices ``index`` (see :func:`forward`),
    quantised on the device and copied to the host once."""
    return _generate(G, x, index, micro_batch, device).permute(0, 2, 3, 1).cpu().numpy()


def _generate(
    G: Generator,
    x: torch.Tensor,
    index: np.ndarray,
    micro_batch: int,
    device: torch.device,
    *,
    pack: bool = False,
) -> torch.Tensor:
    """Quantised images (B, C, H, W) uint8 on ``device``, passes as :func:`_aligned`'s."""

    def quantised(rows: torch.Tensor) -> torch.Tensor:
        return to_uint8(G(rows))  # separate ops, as on the host: no FMA

    return _in_order(
        _aligned(quantised, x.to(device), np.asarray(index, dtype=np.int64), micro_batch, pack=pack),
        len(index),
    )


def confidence(
    D: Discriminator,
    images: torch.Tensor,
    index: np.ndarray,
    category: np.ndarray,
    micro_batch: int,
    *,
    pack: bool = False,
) -> np.ndarray:
    """Q's probability (B,) float32 of category ``category[i]`` for the uint8 images (B, C, H, W)
    of increasing global indices ``index``, each in its row as the generator made it."""

    def q(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(D.q_head(D.trunk(to_float(x))).cat_logits[0].float(), dim=1)

    p = _in_order(_aligned(q, images, np.asarray(index, dtype=np.int64), micro_batch, pack=pack), len(index))
    rows = torch.arange(len(p), device=p.device)
    return p[rows, torch.from_numpy(np.asarray(category, dtype=np.int64)).to(p.device)].cpu().numpy()


def _steps(start: int, stop: int, batch_size: int, micro_batch: int) -> Iterator[tuple[int, int]]:
    """Consecutive ranges covering ``[start, stop)``, cut at whole micro-batches where possible."""
    B = batch_size // micro_batch * micro_batch if batch_size >= micro_batch else batch_size
    a = start
    while a < stop:
        b = min(stop, (a // B + 1) * B)
        yield a, b
        a = b


class _Generating:
    """Makes batches of consecutive samples, several forward passes at once.

    On the CPU, ``workers`` threads each run whole forward passes single-threaded (torch's
    kernels round differently with the thread count; module docstring); elsewhere one thread
    feeds the device.
    """

    def __init__(
        self,
        G: Generator,
        D: Discriminator,
        spec: LatentSpec,
        plan: Plan,
        config: SynthConfig,
        device: torch.device,
        workers: int,
    ):
        self.G, self.D, self.spec, self.plan, self.config, self.device = G, D, spec, plan, config, device
        self.workers = workers

    def make(self, a: int, b: int, offset: int) -> Batch:
        """Samples ``a .. b``: each the first of its draws that Q gives at least ``min_confidence``."""
        M, threshold = self.config.micro_batch, self.config.min_confidence
        score = threshold > 0 or self.config.score_confidence
        index = np.arange(a, b, dtype=np.int64)
        category = self.plan.category(index)
        kept: dict[str, list] = collections.defaultdict(list)
        pending = np.arange(len(index))
        best = np.zeros(len(index), np.float32)
        for draw in range(MAX_DRAWS if threshold > 0 else 1):
            latent = sample_latents(self.spec, self.plan, self.config, index[pending], draw)
            # redraws are sparse: pack them into as few passes as their rows allow
            images = _generate(
                self.G, to_input(self.spec, latent), index[pending], M, self.device, pack=draw > 0
            )
            if score:
                p = confidence(self.D, images, index[pending], category[pending], M, pack=draw > 0)
            else:  # not asked for: no discriminator pass (it would cost half the generator's time)
                p = np.full(len(pending), np.nan, np.float32)
            ok = p >= threshold if score else np.ones(len(pending), bool)
            take = torch.from_numpy(ok)
            kept["row"].append(pending[ok])
            kept["images"].append(images[take.to(images.device)].permute(0, 2, 3, 1).cpu().numpy())
            kept["confidence"].append(p[ok])
            kept["seed"].append(self.config.seed + index[pending[ok]] + draw * DRAW_STRIDE)
            for name in ("z", "cat", "cont"):
                kept[name].append(getattr(latent, name)[take].numpy())
            best[pending] = np.fmax(best[pending], p)
            pending = pending[~ok]
            if not len(pending):
                break
        if len(pending):
            k, c = int(index[pending[0]]), int(category[pending[0]])
            raise InputError(
                f"synthesis.min_confidence {threshold}: sample {k} (category {c}, {self.plan.names[c]!r}) "
                f"found no draw that Q gives its category with at least that probability in "
                f"{MAX_DRAWS} draws (best {best[pending[0]]:.3f}; best of the {len(pending)} such "
                f"sample(s) in samples {a}..{b - 1}: {best[pending].max():.3f}); "
                "lower synthesis.min_confidence"
            )
        order = np.argsort(np.concatenate(kept["row"]), kind="stable")
        cols = {name: np.concatenate(v)[order] for name, v in kept.items() if name != "row"}
        return Batch(
            offset=offset,
            images=cols["images"],
            index=index,
            seed=cols["seed"],
            category=category,
            label=np.array([self.plan.names[c] for c in category], dtype=object),
            z=cols["z"].astype(np.float32),
            categorical=cols["cat"],
            continuous=cols["cont"].astype(np.float32),
            confidence=cols["confidence"].astype(np.float32),
        )

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        steps = list(_steps(start, stop, self.config.batch_size, self.config.micro_batch))
        with contextlib.ExitStack() as stack:
            if self.device.type == "cpu":
                threads = torch.get_num_threads()
                stack.callback(torch.set_num_threads, threads)
                torch.set_num_threads(1)  # and in every worker: MKL and OpenMP count per thread
                pool = stack.enter_context(
                    ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(1,))
                )
            else:
                if self.device.type == "cuda":
                    # cudnn picks algorithms by shape alone, and only deterministic ones
                    stack.enter_context(
                        torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True)
                    )
                pool = stack.enter_context(ThreadPoolExecutor(1))
            pending: collections.deque = collections.deque()
            for a, b in steps:
                pending.append(pool.submit(self.make, a, b, a - start))
                if len(pending) > self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
