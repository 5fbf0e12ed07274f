"""Bulk synthesis: a trained generator makes a labelled data set of synthetic cells.

:func:`synthesise` makes one shard (a contiguous range of sample indices) of a data set of
``config.n`` images (``n`` per category with ``per_category``) into HDF5, and optionally TIFF;
:func:`gather` joins the shards with HDF5 virtual datasets (nothing copied) and writes the
per-category TIFF stacks of the whole set.

The seed is a sample's identity. Sample ``k`` (a global index, from 0) is drawn from seed
``config.seed + k`` (:func:`~infogan_cells.model.latent.sample_latent_by_seed`); its category and,
with ``continuous="grid"``, its continuous codes follow from ``k`` alone. Its pixels are then
bit-identical whatever ``batch_size``, the shard layout or the number of jobs and threads, on a
given device type and software stack, because the generator only ever runs on fixed-size
micro-batches of ``config.micro_batch`` rows aligned to global indices: sample ``k`` always
sits in row ``k % M`` of micro-batch ``k // M``, rows not in the shard or step are zeros, and
on the CPU each forward pass runs single-threaded (parallelism comes from several passes at
once). Matrix and convolution kernels are chosen by the shape of their operands and by the
thread count, and round differently (about 1e-8, enough to flip a uint8 pixel now and then);
with shape, row position and thread count fixed, the only remaining input to a row's result is
the row itself, which ``tests/test_synthesise.py`` checks. Changing ``micro_batch`` or the
device type (CPU instruction set, GPU model, torch or BLAS version) can change pixels by a
grey level; both are recorded in the file.

With ``config.min_confidence`` above 0 or ``config.score_confidence``, Q scores every sample:
``obs/confidence`` is the probability that the run's Q head gives the sample's own category
(NaN when not scored), computed from the stored (quantised) pixels on the same aligned
micro-batches, so it is as reproducible as the pixels. With ``config.min_confidence`` above 0,
sample ``k`` tries the seeds ``config.seed + k + j * DRAW_STRIDE`` for draws ``j = 0, 1, ...`` in
turn (its category and grid codes stay those of ``k``) and keeps the first whose confidence
reaches the threshold; the kept seed is ``obs/seed``. Redraws are sparse, so they are packed:
samples of different micro-batches share a pass where their rows differ, each still in row
``k % M``. Which draw is kept depends on ``k`` and the network alone, so the shards and batch
sizes still agree. A sample with no passing draw within
:data:`MAX_DRAWS` stops the job, naming the best confidence seen, and nothing is written.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import yaml

from infogan_cells import __version__
from infogan_cells.config import CropConfig, LatentSpec, SynthConfig, from_mapping, to_dict
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.augment import to_float
from infogan_cells.model.checkpoint import (
    file_sha256,
    load_discriminator,
    load_generator,
    network_path,
    resolve_device,
)
from infogan_cells.model.latent import Latent, sample_latent_by_seed, to_input
from infogan_cells.model.networks import Discriminator, Generator
from infogan_cells.progress import progress
from infogan_cells.synthesis.writers import (
    DRAW_STRIDE,
    FORMAT,
    FORMAT_VERSION,
    MAX_DRAWS,
    BackgroundWriter,
    Batch,
    HDF5Writer,
    MultiWriter,
    StackPlan,
    TiffImageWriter,
    TiffStackWriter,
    Writer,
    load_hdf5_plugins,
    relative_source,
    write_master,
)

log = logging.getLogger(__name__)

CATEGORY_MAP_NAME = "category_map.csv"
#: The golden ratio's fractional part: ``frac(k * WEYL)`` is a low-discrepancy sequence, so
#: every prefix of the data set has the requested category proportions to within a few samples
#: (at most 4 per category in any prefix of the first 200,000, measured), without any state.
WEYL = (math.sqrt(5.0) - 1.0) / 2.0


# --------------------------------------------------------------------------------------
# What gets made


def read_category_map(path: str | Path, n_categories: int) -> pd.DataFrame:
    """Read ``category_map.csv`` (columns ``category,label,purity``) into a table indexed by category."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"label": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the category map ({err})") from None
    missing = {"category", "label"} - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: the category map lacks column(s) {', '.join(sorted(missing))} "
            "(expected category,label,purity)"
        )
    if not pd.api.types.is_integer_dtype(table["category"]):
        raise InputError(f"{path}: column 'category' must hold integers")
    bad = table.loc[(table["category"] < 0) | (table["category"] >= n_categories), "category"]
    if len(bad):
        raise InputError(
            f"{path}: category {int(bad.iloc[0])} is out of range (the generator has "
            f"{n_categories} categories)"
        )
    if table["category"].duplicated().any():
        raise InputError(
            f"{path}: category {int(table['category'][table['category'].duplicated()].iloc[0])} appears twice"
        )
    table["purity"] = pd.to_numeric(table["purity"], errors="coerce") if "purity" in table.columns else np.nan
    return table.set_index("category").sort_index()[["label", "purity"]]


def find_category_map(run_dir: str | Path) -> Path | None:
    """``category_map.csv`` beside the network file, if there is one."""
    folder = network_path(run_dir).parent
    path = folder / CATEGORY_MAP_NAME
    return path if path.exists() else None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which category and which grid point each global sample index gets.

    ``categories`` are the categories made (all, or those whose label is in ``config.labels``);
    ``proportions`` their mix (None with ``per_category``: sample ``k`` is category
    ``categories[k % len(categories)]``); ``names`` the label of every category of the code.
    """

    n_total: int
    categories: np.ndarray
    proportions: np.ndarray | None
    names: list[str]
    grid_steps: int | None
    continuous_range: float

    def category(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if self.proportions is None:
            return self.categories[index % len(self.categories)]
        u = np.modf(index.astype(np.float64) * WEYL)[0]
        edges = np.cumsum(self.proportions)
        pick = np.minimum(np.searchsorted(edges, u, side="right"), len(self.categories) - 1)
        return self.categories[pick]

    def grid(self, index: np.ndarray, n_continuous: int) -> np.ndarray | None:
        """Continuous codes on the grid (B, n_continuous), or None when they are drawn."""
        if self.grid_steps is None or n_continuous == 0:
            return None
        index = np.asarray(index, dtype=np.int64)
        point = index // len(self.categories) if self.proportions is None else index
        values = np.linspace(-self.continuous_range, self.continuous_range, self.grid_steps)
        digits = [(point // self.grid_steps**j) % self.grid_steps for j in range(n_continuous)]
        return np.stack([values[d] for d in digits], axis=1).astype(np.float32)


def make_plan(
    spec: LatentSpec,
    meta: dict,
    config: SynthConfig,
    *,
    per_category: bool,
    category_map: pd.DataFrame | None,
    source: str = "category map",
) -> Plan:
    """Resolve the categories, their mix and their names; :class:`InputError` for an unknown label."""
    if not spec.categorical:
        raise InputError("the generator has no categorical code: there are no categories to label")
    k = spec.categorical[0]
    names = [f"category_{c:02d}" for c in range(k)]
    if category_map is not None:
        for c, label in category_map["label"].items():
            if label:
                names[int(c)] = str(label)
    categories = np.arange(k)
    if config.labels:
        if category_map is None:
            raise InputError(
                f"synthesis.labels {config.labels!r}: label names need a category map "
                f"({CATEGORY_MAP_NAME} from the analysis; pass --category-map)"
            )
        known = sorted(set(category_map["label"]))
        unknown = [name for name in config.labels if name not in known]
        if unknown:
            raise InputError(
                f"synthesis.labels: unknown label name {unknown[0]!r} in {source} (known: {', '.join(known)})"
            )
        categories = np.array(
            sorted(int(c) for c, label in category_map["label"].items() if label in config.labels)
        )
    proportions = None
    if not per_category:
        if config.proportions == "prior":
            prior = meta.get("category_prior")
            if prior is None:
                raise InputError(
                    "synthesis.proportions='prior': the network file has no learned "
                    "category_prior (train with train.prior=learned, or use uniform)"
                )
            prior = np.asarray(prior[0] if np.ndim(prior) == 2 else prior, dtype=np.float64)
            if prior.shape != (k,) or not np.all(prior >= 0) or prior[categories].sum() <= 0:
                raise InputError(
                    f"the network file's category_prior {prior.tolist()} does not fit {k} categories"
                )
            p = prior[categories]
        else:
            p = np.ones(len(categories))
        proportions = p / p.sum()
    n_total = config.n * len(categories) if per_category else config.n
    grid = config.grid_steps if config.continuous == "grid" else None
    return Plan(n_total, categories, proportions, names, grid, spec.continuous_range)


def shard_range(n_total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """The global indices ``[start, stop)`` of shard ``(i, n)``: the i-th of n near-equal parts."""
    i, n = shard
    return (i * n_total) // n, ((i + 1) * n_total) // n


def _check_shard(shard: Sequence[int]) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard {shard!r}: expected (i, n), e.g. (0, 4)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard {i}/{n}: out of range (need 0 <= i < n and n >= 1)")
    return i, n


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


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (B, C, H, W) in [-1, 1] to (B, H, W, C) uint8 (on their device, then to the CPU)."""
    return _quantise(images).permute(0, 2, 3, 1).cpu().numpy()


def _quantise(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # separate ops: no FMA


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
        return _quantise(G(rows))

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


# --------------------------------------------------------------------------------------
# The stage


def _remove_stale_temporaries(folder: Path, pattern: str) -> None:
    # a job killed with SIGKILL cannot clean up after itself; its rerun does
    for stale in folder.glob(f".{pattern}.*.tmp"):
        log.warning("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


def synthesise(
    run_dir: str | Path,
    out_path: str | Path,
    config: SynthConfig,
    *,
    shard: tuple[int, int] = (0, 1),
    tiff_dir: str | Path | None = None,
    per_category: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    category_map: str | Path | None = None,
) -> Path:
    """Make shard ``shard = (i, n)`` of the synthetic data set into ``out_path`` (HDF5).

    ``config.n`` is the size of the whole data set (of each category with ``per_category``);
    shard ``i`` of ``n`` holds global indices ``[i * N // n, (i + 1) * N // n)``, so the shards
    joined (:func:`gather`) are the whole set. Categories come from ``category_map`` (or
    ``category_map.csv`` beside the network file) for their label names and for
    ``config.labels``; proportions are uniform or the network's learned prior.

    With ``tiff_dir``, also writes one TIFF stack per category there (named with a shard suffix
    when ``n > 1``) and, with ``config.tiff_per_image``, one TIFF per image. (``config.tiff``
    tells the workflow whether to ask for TIFF; here ``tiff_dir`` decides.)

    Sample ``k`` is bit-identical whatever ``batch_size``, the shards and the thread count, on
    one device type (see the module docstring for how). On the CPU, torch's intra-op thread
    count is 1 while this runs (restored after), and that many passes run at once instead.
    Every output is written atomically; an existing output is refused unless ``overwrite``.
    Returns ``out_path``.
    """
    out_path = Path(out_path)
    if config.n < 1:
        raise InputError(f"synthesis.n: {config.n} must be >= 1")
    for key in ("batch_size", "micro_batch"):
        if getattr(config, key) < 1:
            raise InputError(f"synthesis.{key}: {getattr(config, key)} must be >= 1")
    if not 0 <= config.min_confidence < 1:
        raise ConfigError(
            f"config key 'synthesis.min_confidence': {config.min_confidence!r} must be in [0, 1)"
        )
    shard = _check_shard(shard)
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path}: already exists (pass --overwrite to replace it)")
    dev = resolve_device(device)

    G, spec, meta = load_generator(run_dir, ema=config.use_ema, device=dev)
    D, _, _ = load_discriminator(run_dir, device=dev)
    model_file = network_path(run_dir)
    map_path = Path(category_map) if category_map is not None else find_category_map(run_dir)
    cmap = read_category_map(map_path, spec.categorical[0]) if map_path and spec.categorical else None
    plan = make_plan(spec, meta, config, per_category=per_category, category_map=cmap, source=str(map_path))
    start, stop = shard_range(plan.n_total, shard)
    n = stop - start
    channels = G.channels
    channel_names = [str(c) for c in meta.get("channel_names") or [f"channel_{i}" for i in range(channels)]]
    if len(channel_names) != channels:
        raise InputError(
            f"{model_file}: {len(channel_names)} channel names for a {channels}-channel generator"
        )
    image_shape = (G.img_size, G.img_size, channels)
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "shard",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device_type": dev.type,
        "model_file": model_file.name,
        "model_sha256": file_sha256(model_file),
        "config": to_dict(config),
        "per_category": bool(per_category),
        "latent_spec": dataclasses.asdict(spec),
        "category_map": None
        if cmap is None
        else [
            {
                "category": int(c),
                "label": str(r.label),
                "purity": None if pd.isna(r.purity) else float(r.purity),
            }
            for c, r in cmap.iterrows()
        ],
        "category_names": plan.names,
        "categories": plan.categories.tolist(),
        "proportions": None if plan.proportions is None else plan.proportions.tolist(),
        "n_total": plan.n_total,
        "shard_index": shard[0],
        "shard_count": shard[1],
        "start": start,
        "stop": stop,
        "pixel_size_um": crop_pixel_size(meta),
    }
    info = {"format": FORMAT + "-tiff", "model_sha256": attrs["model_sha256"], "package_version": __version__}

    _remove_stale_temporaries(out_path.parent, out_path.name)
    if tiff_dir is not None:
        _remove_stale_temporaries(Path(tiff_dir), "category_*")
    writers: list[Writer] = []
    suffix = "" if shard[1] == 1 else f".shard-{shard[0]:03d}-of-{shard[1]:03d}"
    # a stack names each page's seed up front; with min_confidence the seeds are known only once
    # made, so the stacks are written from the finished HDF5 file instead
    stacks_after = tiff_dir is not None and config.min_confidence > 0
    try:
        if tiff_dir is not None and not stacks_after:
            index = np.arange(start, stop, dtype=np.int64)
            writers.append(
                TiffStackWriter(
                    tiff_dir,
                    stack_plans(index, config.seed + index, plan.category(index), plan.names),
                    image_shape=image_shape,
                    channel_names=channel_names,
                    info=info,
                    suffix=suffix,
                    overwrite=overwrite,
                    pixel_size_um=attrs["pixel_size_um"],
                )
            )
        if tiff_dir is not None and config.tiff_per_image:
            writers.append(
                TiffImageWriter(
                    tiff_dir,
                    image_shape=image_shape,
                    info=info,
                    overwrite=overwrite,
                    pixel_size_um=attrs["pixel_size_um"],
                )
            )
        writers.append(
            HDF5Writer(
                out_path,
                n=n,
                image_shape=image_shape,
                channel_names=channel_names,
                z_dim=spec.z_dim,
                n_codes=len(spec.categorical),
                n_continuous=spec.n_continuous,
                attrs=attrs,
                compression=config.compression,
                overwrite=overwrite,
            )
        )
    except BaseException:
        for w in writers:
            w.abort()
        raise

    workers = max(1, torch.get_num_threads()) if dev.type == "cpu" else 1
    log.info(
        "synthesising samples %d..%d of %d (shard %d/%d) on %s with %d worker(s) into %s",
        start,
        stop,
        plan.n_total,
        shard[0],
        shard[1],
        dev,
        workers,
        out_path,
    )
    t0, done, last = time.perf_counter(), 0, 0.0
    # closing(): on an error, stop the workers and restore torch's thread count at once
    with (
        BackgroundWriter(MultiWriter(writers)) as writer,
        contextlib.closing(
            _Generating(G, D, spec, plan, config, dev, workers).batches(start, stop)
        ) as batches,
        progress(stop - start, "synthesise", unit="img") as bar,
    ):
        for batch in batches:
            writer.write(batch)
            bar.update(len(batch))
            done += len(batch)
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                log.info("%d/%d images (%.0f/s)", done, n, done / max(last - t0, 1e-9))
    if stacks_after:
        try:
            write_tiff_stacks([out_path], tiff_dir, suffix=suffix, overwrite=overwrite)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
    log.info("made %d images in %.1f s", n, time.perf_counter() - t0)
    return out_path


def stack_plans(
    index: np.ndarray, seed: np.ndarray, category: np.ndarray, names: Sequence[str]
) -> list[StackPlan]:
    """One :class:`StackPlan` per category present, pages in index order."""
    return [
        StackPlan(int(c), names[int(c)], index[category == c], seed[category == c])
        for c in np.unique(category)
    ]


# --------------------------------------------------------------------------------------
# Joining shards


def _shard_attrs(path: Path) -> dict:
    from infogan_cells.synthesis.validate import validate_file

    problems = validate_file(path)
    if problems:
        raise InputError(f"{path}: not a valid synthesis shard: {problems[0]}")
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    if attrs.get("kind") != "shard":
        raise InputError(f"{path}: is a {attrs.get('kind')!r} file, not a shard")
    return attrs


def gather(
    shards: Sequence[str | Path],
    out_path: str | Path,
    *,
    tiff_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Join shard files into ``out_path``: HDF5 virtual datasets over the shards, nothing copied.

    The shards must all come from one data set (same model, config and shard count) and be
    complete (every shard once). Sources are stored relative to ``out_path``, so the folder can
    move as a whole. With ``tiff_dir``, writes one TIFF stack per category of the whole set.
    Returns ``out_path``.
    """
    out_path = Path(out_path)
    if not shards:
        raise InputError("gather: no shard files given")
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path}: already exists (pass --overwrite to replace it)")
    shards = [Path(p) for p in shards]
    for p in shards:
        if not p.exists():
            raise InputError(f"{p}: shard file not found")
    attrs = {p: _shard_attrs(p) for p in shards}
    first_path, first = shards[0], attrs[shards[0]]
    same = ("model_sha256", "config", "per_category", "n_total", "shard_count", "category_names")
    for p, a in attrs.items():
        for key in same:
            if str(a.get(key)) != str(first.get(key)):
                raise InputError(
                    f"{p}: {key} differs from {first_path}'s: the shards are not from one data set"
                )
    count = int(first["shard_count"])
    order = sorted(shards, key=lambda p: int(attrs[p]["shard_index"]))
    indices = [int(attrs[p]["shard_index"]) for p in order]
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise InputError(
            f"gather: expected shards 0..{count - 1} once each; "
            + (f"missing {missing}" if missing else f"repeated {dup}")
        )
    master = {k: v for k, v in first.items() if k != "shard_index"}
    master.update(
        kind="master",
        start=0,
        stop=int(first["n_total"]),
        shard_files=[relative_source(p, out_path.parent) for p in order],
    )
    if tiff_dir is not None:
        # the stacks first, so the master's presence means the whole job finished
        write_tiff_stacks(order, tiff_dir, overwrite=overwrite)
    write_master(order, out_path, master, overwrite=overwrite)
    log.info("gathered %d shards (%d images) into %s", count, int(first["n_total"]), out_path)
    return out_path


def crop_pixel_size(meta: dict) -> float | None:
    """The size in micrometres of one pixel of the crops a run was trained on, from the resolved
    config in its checkpoint meta: known only with ``crop.pixel_size_um`` and ``crop.window_px``."""
    try:
        section = (yaml.safe_load(meta.get("config") or "") or {}).get("crop") or {}
        return from_mapping(CropConfig, section, "crop.").crop_pixel_size_um
    except (yaml.YAMLError, AttributeError, ConfigError):
        return None


def write_tiff_stacks(
    sources: Sequence[str | Path],
    tiff_dir: str | Path,
    *,
    suffix: str = "",
    overwrite: bool = False,
    block: int = 1024,
) -> list[Path]:
    """Write one TIFF stack per category from synthetic HDF5 files (shards in order, or one file),
    reading each once, ``block`` images at a time."""
    load_hdf5_plugins()
    sources = [Path(p) for p in sources]
    obs: dict[str, list] = {"index": [], "seed": [], "category": []}
    for path in sources:
        with h5py.File(path, "r") as f:
            for c in obs:
                obs[c].append(f["obs"][c][:])
            names = json.loads(f.attrs["category_names"])
            channel_names = [str(c) for c in f["images"].attrs["channel_names"]]
            image_shape = f["images"].shape[1:]
            info = {
                "format": FORMAT + "-tiff",
                "model_sha256": str(f.attrs["model_sha256"]),
                "package_version": __version__,
            }
            pixel_size = json.loads(str(f.attrs.get("pixel_size_um", "null")))
    cols = {c: np.concatenate(v) for c, v in obs.items()}
    plans = stack_plans(cols["index"], cols["seed"], cols["category"], names)
    offset = 0
    with TiffStackWriter(
        tiff_dir,
        plans,
        image_shape=image_shape,
        channel_names=channel_names,
        info=info,
        suffix=suffix,
        overwrite=overwrite,
        pixel_size_um=pixel_size,
    ) as writer:
        for path in sources:
            with h5py.File(path, "r") as f:
                images, n = f["images"], f["images"].shape[0]
                for a in range(0, n, block):
                    b = min(n, a + block)
                    rows = slice(offset + a, offset + b)
                    empty = np.zeros((b - a, 0), np.float32)
                    writer.write(
                        Batch(
                            offset=offset + a,
                            images=images[a:b],
                            index=cols["index"][rows],
                            seed=cols["seed"][rows],
                            category=cols["category"][rows],
                            label=np.array([names[c] for c in cols["category"][rows]], dtype=object),
                            z=empty,
                            categorical=empty,
                            continuous=empty,
                        )
                    )
            offset += n
    return writer.paths
