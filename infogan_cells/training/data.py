"""The training set on the device, and each step's inputs drawn there.

The whole crop set lives on the training device as one uint8 tensor; batches are indexed there
and augmented as tensors, so no data loader or per-sample Python runs in the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from infogan_cells.config import AugmentConfig, TrainConfig
from infogan_cells.data.store import holdout_split, read_crop_store
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.augment import augment_batch, needs_float, to_float
from infogan_cells.model.latent import Latent, sample_latent
from infogan_cells.training.neighbours import feature_neighbours, nearest_neighbours

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Crops:
    """The training set on its device: images (N, C, H, W) uint8, and per-crop supervision targets
    (N,) int64 (-1 = not supervised) when semi-supervised; ``holdout`` the store's row numbers of
    the crops kept out of training."""

    images: torch.Tensor
    targets: torch.Tensor | None
    channel_names: list[str]
    label_names: list[str]
    holdout: list[int] = dataclasses.field(default_factory=list)  # store rows kept out of training

    @property
    def img_size(self) -> int:
        return int(self.images.shape[-1])


def load_crops(
    crops_path: str | Path, config: TrainConfig, device: torch.device, generator: torch.Generator
) -> Crops:
    """Read a crop store onto ``device``; choose the supervised subset with ``generator`` (CPU).

    The images go straight from the file into one preallocated (N, C, H, W) uint8 tensor on
    ``device``, a block of about :data:`LOAD_BLOCK_BYTES` at a time, so host memory peaks near the
    crops' own size (on a GPU, near one block). A set that the device cannot hold is refused
    before anything is read, naming the size needed and the size free.
    """
    crops_path = Path(crops_path)
    cs = read_crop_store(crops_path, load_images=False)
    keep = np.ones(len(cs), bool)
    if "qc_pass" in cs.obs.columns:
        keep = cs.obs["qc_pass"].to_numpy(dtype=bool, copy=True)
        if (~keep).any():
            log.info("%s: training on %d of %d crops (the rest failed QC)", crops_path, keep.sum(), len(keep))
    if not keep.any():
        raise InputError(
            f"{crops_path}: crop store holds no crops to train on "
            f"({len(cs)} crops, {int((~keep).sum())} failed QC)"
        )
    holdout = np.zeros(0, np.int64)
    if config.holdout_fraction > 0:  # the same split the analysis makes of the crops that passed QC
        if keep.sum() < 4:
            raise InputError(
                f"{crops_path}: {int(keep.sum())} crops cannot be split for train.holdout_fraction="
                f"{config.holdout_fraction} (at least 2 to train on and 2 to hold out)"
            )
        hold, _ = holdout_split(int(keep.sum()), config.holdout_fraction)
        holdout = np.flatnonzero(keep)[hold]
        keep[holdout] = False
        log.info(
            "%s: %d crops held out of training (train.holdout_fraction=%g)",
            crops_path,
            len(holdout),
            config.holdout_fraction,
        )
    with h5py.File(crops_path, "r") as f:
        n_all, h, w, c = f["images"].shape
    n = int(keep.sum())
    if h != w or h < 8 or h & (h - 1):
        raise InputError(
            f"{crops_path}: crops are {h}x{w} px; training needs square crops whose side is a "
            "power of two (32, 64, 128); re-crop with crop.size"
        )
    labels = cs.labels[keep]
    label_names = sorted({str(lab) for lab in labels if lab})
    targets = None
    spec = config.latent
    fraction = config.supervised_fraction
    partly = 0 < int((labels != "").sum()) < len(labels)
    if fraction == 0 and config.partial_labels and partly and spec.categorical:
        fraction = 1.0
        log.info(
            "%s: %d of %d crops carry labels (%s): they supervise Q's categories (train.partial_labels; "
            "false trains without them)",
            crops_path,
            int((labels != "").sum()),
            len(labels),
            ", ".join(label_names),
        )
    if fraction > 0:
        key = "train.supervised_fraction" if config.supervised_fraction > 0 else "train.partial_labels"
        if not label_names:
            raise InputError(
                f"{crops_path}: supervised_fraction={config.supervised_fraction} but no crop has a "
                "label (the obs 'label' column is empty); set train.supervised_fraction: 0 to train "
                "without labels"
            )
        k = spec.categorical[0] if spec.categorical else 0
        if len(label_names) > k:
            raise ConfigError(
                f"config key 'train.latent.categorical': the first code has {k} categories but the "
                f"crops have {len(label_names)} labels ({', '.join(label_names)}); semi-supervision "
                f"({key}) needs at least one category per label"
            )
        t = np.full(n, -1, np.int64)
        for i, name in enumerate(label_names):
            idx = np.flatnonzero(labels == name)
            # at least one supervised crop per label, so rare classes get a category of their own
            m = max(1, int(round(fraction * len(idx))))
            pick = torch.randperm(len(idx), generator=generator)[:m].numpy()
            t[idx[pick]] = i
        targets = torch.from_numpy(t).to(device)
        log.info(
            "semi-supervised: %d labelled crops supervise Q (%s)",
            int((t >= 0).sum()),
            ", ".join(f"{i}={name}" for i, name in enumerate(label_names)),
        )
    tensor = _read_images(crops_path, keep, (n, c, h, w), device)
    names = cs.channel_names or [f"channel_{i}" for i in range(c)]
    return Crops(tensor, targets, names, label_names if targets is not None else [], holdout.tolist())


#: Bytes of crops read from the store at a time while loading (the host memory on top of the set).
LOAD_BLOCK_BYTES = 16 << 20


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (host: MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _read_images(
    path: Path, keep: np.ndarray, shape: tuple[int, int, int, int], device: torch.device
) -> torch.Tensor:
    """The kept rows of the store's (N, H, W, C) images as one (n, C, H, W) uint8 tensor on
    ``device``, filled block by block (no second copy of the set anywhere)."""
    need = int(np.prod(shape))
    free = free_memory(device)
    if free is not None and need > free:
        raise InputError(
            f"{path}: the crops need {_size(need)} on {device} and only "
            f"{_size(free)} is free; train on fewer or smaller crops, or on a device "
            "with more memory"
        )
    out = torch.empty(shape, dtype=torch.uint8, device=device)
    with h5py.File(path, "r") as f:
        ds = f["images"]
        per_image = max(1, int(np.prod(ds.shape[1:])))
        chunk = ds.chunks[0] if ds.chunks else 1
        block = max(chunk, LOAD_BLOCK_BYTES // per_image // chunk * chunk)
        row = 0
        for a in range(0, len(keep), block):
            sel = keep[a : a + block]
            if not sel.any():
                continue
            arr = ds[a : a + len(sel)]
            if not sel.all():
                arr = arr[sel]
            part = torch.from_numpy(arr).permute(0, 3, 1, 2)  # a view: (m, C, H, W)
            out[row : row + len(arr)].copy_(part)
            row += len(arr)
    if row != shape[0]:
        raise InputError(f"{path}: read {row} crops, expected {shape[0]}")
    return out


def augment_real(images: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 real crops -> augmented float crops in [-1, 1] (the integer transforms stay on uint8)."""
    if needs_float(augment):
        return augment_batch(to_float(images), augment, generator)
    return to_float(augment_batch(images, augment, generator))


class Batches:
    """Draws each step's inputs on the training device: a real batch (augmented), a class-balanced
    batch of labelled crops when semi-supervised, each real crop's neighbour (``pair_neighbours``),
    and a latent batch; no host sync."""

    def __init__(
        self,
        crops: Crops,
        config: TrainConfig,
        data_gen: torch.Generator,
        latent_gen: torch.Generator,
        neighbours: torch.Tensor | None = None,
    ):
        """``neighbours``: ones mined before (a resumed run's), used instead of a search in pixels."""
        self.crops, self.config, self.data_gen, self.latent_gen = crops, config, data_gen, latent_gen
        self.n = crops.images.shape[0]
        self.dev = crops.images.device
        self.sup_pool = self.sup_cdf = None
        if crops.targets is not None:  # classes drawn equally often: weights 1 / class size
            self.sup_pool = torch.nonzero(crops.targets >= 0).squeeze(1)
            cls = crops.targets[self.sup_pool]
            w = 1.0 / torch.bincount(cls)[cls].float()
            self.sup_cdf = torch.cumsum(w / w.sum(), 0)
        self.neighbours = None if neighbours is None else neighbours.to(self.dev)
        # the candidate pool is drawn from a generator of its own: the batches' draws do not depend on it
        self.pool_gen = torch.Generator(device=self.dev).manual_seed(int(data_gen.initial_seed()) + 1)
        uses = config.pair_neighbours > 0 and config.lambda_pair_mi > 0
        #: images between two minings from D's features (0: never)
        self.refresh_every = (
            max(config.batch_size, int(config.pair_neighbours_refresh * config.total_images))
            if uses and config.pair_neighbours_refresh > 0
            else 0
        )
        if uses and self.neighbours is None and config.pair_neighbours_from == "pixels":
            t0 = time.perf_counter()
            self.neighbours = nearest_neighbours(crops.images, config.pair_neighbours, self.pool_gen)
            log.info(
                "pair term: the %d nearest of %d crops (pixels) are each crop's positives (%.1f s)",
                self.neighbours.shape[1],
                self.n,
                time.perf_counter() - t0,
            )

    def refresh_neighbours(self, D: torch.nn.Module, images_seen: int) -> None:
        """Mine each crop's neighbours again, from D's own features (``pair_neighbours_refresh``); the
        candidate pool of a large set is drawn afresh from ``images_seen`` (a resumed run draws the same)."""
        t0 = time.perf_counter()
        gen = torch.Generator(device=self.dev).manual_seed(self.pool_gen.initial_seed() + images_seen)
        self.neighbours = feature_neighbours(
            D, self.crops.images, self.config.pair_neighbours, gen, self.config.batch_size
        )
        log.info("pair term: neighbours mined again from D's features (%.1f s)", time.perf_counter() - t0)

    def real(
        self,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """(real batch, (labelled crops, their categories) or None, the real crops' neighbours or None)."""
        cfg, g = self.config, self.data_gen
        idx = torch.randint(self.n, (cfg.batch_size,), generator=g, device=self.dev)
        real = augment_real(self.crops.images[idx], cfg.augment, g)
        partner = None
        if self.neighbours is not None:
            col = torch.randint(self.neighbours.shape[1], (cfg.batch_size,), generator=g, device=self.dev)
            partner = augment_real(self.crops.images[self.neighbours[idx, col]], cfg.augment, g)
        if self.sup_pool is None:
            return real, None, partner
        u = torch.rand(cfg.supervised_batch, generator=g, device=self.dev)
        pick = torch.searchsorted(self.sup_cdf, u, right=True).clamp_(max=len(self.sup_pool) - 1)
        j = self.sup_pool[pick]
        return real, (augment_real(self.crops.images[j], cfg.augment, g), self.crops.targets[j]), partner

    def latent(self, cat_probs: list[torch.Tensor] | None) -> Latent:
        return sample_latent(
            self.config.latent, self.config.batch_size, generator=self.latent_gen, cat_probs=cat_probs
        )
