"""Train an InfoGAN on a crop store: the training stage of the pipeline.

``train(crops_path, run_dir, config, seed=...)`` writes a run directory, each file atomically::

    config.yaml            the resolved config
    stats.jsonl            one record per tick: images seen, losses, images/s, seconds
    samples-<kimg>.png     a fixed latent grid (rows = categories, columns = continuous-code sweeps)
    samples.gif            those grids over training
    loss.png               the loss curves
    resume.pt              optimisers, counters, RNG states, EMA, learned prior (every checkpoint_images;
                           removed once network-final.pt is written)
    network-final.pt       G, EMA G, D+Q and meta (see :mod:`infogan_cells.model.checkpoint`); D's BatchNorm
                           statistics are recomputed on the real crops first (Q in eval mode reads
                           real crops)

Rerunning the same command after a kill resumes from ``resume.pt``; on the CPU the resumed run
ends bit-identical to an uninterrupted one. A finished run (``network-final.pt`` for the same
config and seed) returns at once.

The whole crop set lives on the training device as one uint8 tensor; batches are indexed there
and augmented as tensors, so no data loader or per-sample Python runs in the loop. Randomness
comes from ``torch.Generator`` objects made from ``seed`` (never torch's global RNG).

Checkpoint meta written here, beside what :func:`~infogan_cells.model.checkpoint.save_network` needs:
``channel_names``, ``img_size``, ``category_prior`` (one probability list per categorical code:
the learned prior, or uniform), ``category_labels`` (label names of categories 0..n-1 when
semi-supervised, else empty), ``holdout`` (store rows kept out of training), ``images_seen``, ``seed``, ``config`` (resolved config YAML),
``train_config`` (the TrainConfig YAML that identifies the run), ``n_crops``, ``device``, ``tf32``,
``bf16``, ``torch``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from infogan_cells._io import atomic_path, write_text_atomic
from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig, dump_config, to_dict
from infogan_cells.data.store import holdout_split, read_crop_store
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.augment import augment_batch, is_identity, needs_float, to_float
from infogan_cells.model.checkpoint import (
    FINAL_NAME,
    autocast,
    load_payload,
    resolve_device,
    resolve_precision,
    save_network,
)
from infogan_cells.model.latent import Latent, latent_grid, sample_latent, to_input
from infogan_cells.model.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    InfoLoss,
    PairMILoss,
    SupervisedLoss,
    total,
)
from infogan_cells.model.networks import Discriminator, Generator, QOutput, init_weights

__all__ = [
    "train",
    "InfoGANStep",
    "build_networks",
    "build_optimizers",
    "q_of_features",
    "load_crops",
    "recalibrate_batchnorm",
]

log = logging.getLogger(__name__)

RESUME_NAME = "resume.pt"
STATS_NAME = "stats.jsonl"
RESUME_FORMAT = "infogan-cells/resume"
GRID_STEPS = 8  # columns per continuous-code sweep in the sample grids


# --------------------------------------------------------------------------------------
# Building blocks (tests use them one by one)


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
                "label (the obs 'label' column is empty)"
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


def _read_images(
    path: Path, keep: np.ndarray, shape: tuple[int, int, int, int], device: torch.device
) -> torch.Tensor:
    """The kept rows of the store's (N, H, W, C) images as one (n, C, H, W) uint8 tensor on
    ``device``, filled block by block (no second copy of the set anywhere)."""
    need = int(np.prod(shape))
    free = free_memory(device)
    if free is not None and need > free:
        raise InputError(
            f"{path}: the crops need {need / 2**30:.2f} GiB on {device} and only "
            f"{free / 2**30:.2f} GiB is free; train on fewer or smaller crops, or on a device "
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


def build_networks(
    spec: LatentSpec, img_size: int, channels: int, config: TrainConfig, generator: torch.Generator
) -> tuple[Generator, Discriminator]:
    """G and D+Q, initialised from ``generator`` (torch's global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):  # module constructors draw default inits from it
        G = Generator(spec, img_size=img_size, channels=channels, width=config.g_channels)
        D = Discriminator(
            spec,
            img_size=img_size,
            channels=channels,
            width=config.d_channels,
            spectral_norm=config.spectral_norm,
            q_overcluster=config.q_overcluster,
        )
    init_weights(G, generator=generator)
    init_weights(D, generator=generator)
    return G, D


def build_optimizers(
    G: Generator, D: Discriminator, config: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for G, and Adam for all of D: trunk, D head and Q head.

    Q sits in D's optimiser with the trunk, so whether the information loss trains the trunk is
    decided by the graph (:func:`q_of_features`), never by an optimiser that leaves it out.
    """
    kw: dict[str, Any] = {"betas": (config.beta1, config.beta2)}
    if device.type in ("cuda", "cpu"):
        kw["fused"] = True  # one kernel for all parameters (CUDA; also implemented for CPU)
    return (
        torch.optim.Adam(G.parameters(), lr=config.lr_g, **kw),
        torch.optim.Adam(D.parameters(), lr=config.lr_d, **kw),
    )


def q_of_features(D: Discriminator, h: torch.Tensor, train_trunk: bool) -> QOutput:
    """Q's output on trunk features ``h``; with ``train_trunk`` False its loss stops at the Q head."""
    return D.q_head(h if train_trunk else h.detach())


class InfoGANStep:
    """One optimisation step of D+Q, then of G, on a real batch and a latent batch.

    D's step minimises the adversarial loss on real and fake, plus the information loss on the
    fake batch (it trains Q, and D's shared trunk iff ``config.info_trains_trunk``), plus the
    supervised loss on a separate batch of labelled real crops (semi-supervised runs). With
    ``config.diff_augment`` every image D and Q see (real and fake, in both steps) goes through the
    same random differentiable transforms first. G's step minimises its adversarial loss plus the
    information loss (the paper's min_G max_D V - lambda I, both players sharing L_I).
    Returns the named scalars (detached 0-dim tensors; nothing is synced to the host).
    """

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        opt_G: torch.optim.Optimizer,
        opt_D: torch.optim.Optimizer,
        spec: LatentSpec,
        config: TrainConfig,
        device: torch.device,
    ):
        self.G, self.D, self.opt_G, self.opt_D = G, D, opt_G, opt_D
        self.spec, self.config, self.device = spec, config, device
        self.d_loss = DiscriminatorLoss(config.loss)
        self.g_loss = GeneratorLoss(config.loss)
        self.info_loss = InfoLoss(config.lambda_cat, config.lambda_cont)
        self.sup_loss = SupervisedLoss(config.lambda_sup)
        self.pair_loss = PairMILoss(config.lambda_pair_mi, config.pair_mi_entropy)
        self.precision = resolve_precision(config.precision, device)
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self._D_params = list(D.parameters())
        # the callables (compiled on CUDA when asked); G and D stay the plain modules
        self.G_fwd, self.trunk = G, D.trunk
        if config.compile and device.type == "cuda":
            self.G_fwd, self.trunk = torch.compile(G), torch.compile(D.trunk)
        elif config.compile:
            log.info("compile: ignored on %s (CUDA only)", device)

    def __call__(
        self,
        real: torch.Tensor,
        latent: Latent,
        supervised: tuple[torch.Tensor, torch.Tensor] | None = None,
        want_q_real: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], QOutput | None]:
        """``real`` (B, C, H, W) float in [-1, 1]; ``supervised`` (images, categories) a batch of labelled
        real crops for Q's supervised loss; ``generator`` draws the differentiable augmentation."""
        cfg, D, trunk = self.config, self.D, self.trunk
        real = real.contiguous(memory_format=self.memory_format)
        if is_identity(cfg.diff_augment):

            def T(x: torch.Tensor) -> torch.Tensor:
                return x
        else:
            if generator is None:
                raise ValueError("diff_augment needs a generator")

            def T(x: torch.Tensor) -> torch.Tensor:
                return augment_batch(x, cfg.diff_augment, generator)

        prec, pair = self.precision, cfg.lambda_pair_mi > 0
        with autocast(self.device, prec):
            # G's output in fp32 before augmentation: DiffAugment's resampling is then the same
            # arithmetic for real and generated images (bf16 would quantise the fakes' grid only)
            fake = self.G_fwd(to_input(self.spec, latent)).float()
            # --- D and Q (both see T(real) and T(fake): DiffAugment)
            h_real = trunk(T(real))
            h_fake = trunk(T(fake.detach()))
            real_logits = D.d_head(h_real).squeeze(1).float()
            fake_logits = D.d_head(h_fake).squeeze(1).float()
            q_fake = q_of_features(D, h_fake, cfg.info_trains_trunk)
            q_real = q_of_features(D, h_real, cfg.info_trains_trunk) if want_q_real or pair else None
            q_sup = q_view2 = None
            if supervised is not None:
                x_sup = supervised[0].contiguous(memory_format=self.memory_format)
                q_sup = q_of_features(D, trunk(T(x_sup)), cfg.info_trains_trunk)
            if pair:
                q_view2 = q_of_features(D, trunk(T(real)), cfg.info_trains_trunk)
        # every loss term in fp32, outside autocast
        terms = self.d_loss(real_logits, fake_logits)
        terms.update(self.info_loss(q_fake, latent))
        d_total = total(terms, "Loss/D/adv", "Loss/Q/info")
        if q_sup is not None:
            terms.update(self.sup_loss(q_sup.cat_logits[0], supervised[1]))
            d_total = d_total + terms["Loss/Q/sup"]
        if pair:
            terms.update(self.pair_loss(q_real.cat_logits[0], q_view2.cat_logits[0]))
            d_total = d_total + terms["Loss/Q/pair_mi"]
            if q_real.over_logits is not None:
                over = self.pair_loss(q_real.over_logits, q_view2.over_logits)
                terms["Loss/Q/pair_mi_over"], terms["MI/Q/pair_over"] = (
                    over["Loss/Q/pair_mi"],
                    over["MI/Q/pair"],
                )
                d_total = d_total + terms["Loss/Q/pair_mi_over"]
        self.opt_D.zero_grad(set_to_none=True)
        d_total.backward()
        self.opt_D.step()
        # --- G (D's weights need no gradient here: skip computing them)
        for p in self._D_params:
            p.requires_grad_(False)
        with autocast(self.device, prec):
            h = trunk(T(fake))
            g_logits = D.d_head(h).squeeze(1).float()
            q = D.q_head(h)
        g_terms = self.g_loss(g_logits)
        g_info = self.info_loss(q, latent)
        self.opt_G.zero_grad(set_to_none=True)
        (g_terms["Loss/G/adv"] + g_info["Loss/Q/info"]).backward()
        self.opt_G.step()
        for p in self._D_params:
            p.requires_grad_(True)
        terms.update(g_terms)
        terms["Loss/G/info"] = g_info["Loss/Q/info"]
        terms = {k: v.detach() for k, v in terms.items()}
        if not want_q_real:
            return terms, None
        return terms, QOutput(
            [t.detach() for t in q_real.cat_logits], q_real.cont_mu.detach(), q_real.cont_log_sigma.detach()
        )


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


# --------------------------------------------------------------------------------------
# Run directory helpers


def _identity(config: TrainConfig, seed: int) -> dict:
    return {"train_config": dump_config(config), "seed": int(seed)}


def _save_resume(path: Path, state: dict) -> None:
    """Write the resume state atomically (tests replace this to simulate a kill after a checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _check_same_run(path: Path, found: dict, want: dict) -> None:
    if found.get("seed") != want["seed"] or found.get("train_config") != want["train_config"]:
        raise InputError(
            f"{path}: belongs to a run with a different training config or seed; "
            "use a new run directory (or delete this one) to train with these settings"
        )


def _write_stats(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def _grid_latent(spec: LatentSpec, seed: int) -> tuple[Latent, int]:
    """The fixed latent grid of the sample sheets: rows = categories of the first code, columns =
    a sweep of each continuous code in turn (same z per row), or random z when there are none."""
    if spec.n_continuous == 0:
        g = torch.Generator().manual_seed(seed)
        n_rows = spec.categorical[0] if spec.categorical else 1
        lat = sample_latent(spec, n_rows * GRID_STEPS, generator=g)
        if spec.categorical:
            lat.cat[:, 0] = torch.arange(n_rows).repeat_interleave(GRID_STEPS)
        return lat, GRID_STEPS
    panels = [
        latent_grid(spec, n_steps=GRID_STEPS, code=j, generator=torch.Generator().manual_seed(seed))
        for j in range(spec.n_continuous)
    ]
    n_rows = len(panels[0]) // GRID_STEPS

    def rows(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.reshape(n_rows, GRID_STEPS, -1) for x in t], dim=1).reshape(-1, t[0].shape[1])

    lat = Latent(rows([p.z for p in panels]), rows([p.cat for p in panels]), rows([p.cont for p in panels]))
    return lat, GRID_STEPS * spec.n_continuous


def _snapshot(
    run_dir: Path,
    G: Generator,
    grid: Latent,
    n_cols: int,
    spec: LatentSpec,
    cur_nimg: int,
    records: list[dict],
    device: torch.device,
) -> None:
    from infogan_cells.report import plots

    was_training = G.training
    G.eval()
    with torch.no_grad():
        x = G(to_input(spec, grid.to(device))).float().cpu().numpy()
    G.train(was_training)
    kimg = cur_nimg // 1000
    scale = max(1, 64 // x.shape[-1])
    plots.save_grid(run_dir / f"samples-{kimg:06d}.png", x, n_cols, scale=scale, group_cols=GRID_STEPS)
    frames = sorted(p for p in run_dir.glob("samples-*.png") if int(p.stem.split("-")[1]) <= kimg)
    plots.save_gif(run_dir / "samples.gif", frames)
    if records:
        plots.plot_losses(run_dir / "loss.png", records)


@contextlib.contextmanager
def _device_flags(device: torch.device, tf32: bool):
    """On CUDA: TF32 for matmuls and convolutions as asked (a recorded choice), and cuDNN's
    autotuner (every shape in the loop is static); restored afterwards."""
    if device.type != "cuda":
        yield
        return
    old = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = old


def _augment_real(images: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 real crops -> augmented float crops in [-1, 1] (the integer transforms stay on uint8)."""
    if needs_float(augment):
        return augment_batch(to_float(images), augment, generator)
    return to_float(augment_batch(images, augment, generator))


class _Batches:
    """Draws each step's inputs on the training device: a real batch (augmented), a class-balanced
    batch of labelled crops when semi-supervised, and a latent batch; no host sync."""

    def __init__(
        self, crops: Crops, config: TrainConfig, data_gen: torch.Generator, latent_gen: torch.Generator
    ):
        self.crops, self.config, self.data_gen, self.latent_gen = crops, config, data_gen, latent_gen
        self.n = crops.images.shape[0]
        self.dev = crops.images.device
        self.sup_pool = self.sup_cdf = None
        if crops.targets is not None:  # classes drawn equally often: weights 1 / class size
            self.sup_pool = torch.nonzero(crops.targets >= 0).squeeze(1)
            cls = crops.targets[self.sup_pool]
            w = 1.0 / torch.bincount(cls)[cls].float()
            self.sup_cdf = torch.cumsum(w / w.sum(), 0)

    def real(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        cfg, g = self.config, self.data_gen
        idx = torch.randint(self.n, (cfg.batch_size,), generator=g, device=self.dev)
        real = _augment_real(self.crops.images[idx], cfg.augment, g)
        if self.sup_pool is None:
            return real, None
        u = torch.rand(cfg.supervised_batch, generator=g, device=self.dev)
        pick = torch.searchsorted(self.sup_cdf, u, right=True).clamp_(max=len(self.sup_pool) - 1)
        j = self.sup_pool[pick]
        return real, (_augment_real(self.crops.images[j], cfg.augment, g), self.crops.targets[j])

    def latent(self, cat_probs: list[torch.Tensor] | None) -> Latent:
        return sample_latent(
            self.config.latent, self.config.batch_size, generator=self.latent_gen, cat_probs=cat_probs
        )


@torch.no_grad()
def update_prior(prior: list[torch.Tensor], q_real: QOutput, momentum: float) -> None:
    """Move each code's running prior toward the share of real crops Q puts in each category
    (one-hot counts: no host sync, unlike ``bincount``)."""
    for p, logits in zip(prior, q_real.cat_logits, strict=True):
        share = F.one_hot(logits.argmax(1), p.numel()).float().mean(0)
        p.mul_(momentum).add_(share, alpha=1 - momentum)


def _check_config(config: TrainConfig) -> None:
    """The config's own cross-field rules (:meth:`TrainConfig.check`), for a TrainConfig built in code."""
    config.check("train.")


# --------------------------------------------------------------------------------------
# The training loop


def train(
    crops_path: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    seed: int,
    device: str = "auto",
    progress: bool = False,
    resolved_config: Any = None,
) -> Path:
    """Train an InfoGAN on the crops in ``crops_path``; write (or resume, or find) ``run_dir``.

    ``seed`` fixes the initial weights, batches, latents and augmentations; ``resolved_config``
    (the whole pipeline :class:`~infogan_cells.config.Config`) is written as ``config.yaml``.
    Returns ``run_dir``. Raises :class:`InputError` / :class:`ConfigError` for a bad store,
    config or device.
    """
    # --- seed and device
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train(): config must be a TrainConfig, got {type(config).__name__}")
    _check_config(config)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    spec = config.latent
    ident = _identity(config, seed)
    final_path, resume_path, stats_path = run_dir / FINAL_NAME, run_dir / RESUME_NAME, run_dir / STATS_NAME
    if final_path.exists():
        meta = load_payload(final_path).get("meta", {})
        _check_same_run(final_path, meta, ident)
        log.info("%s: already trained (%d images); nothing to do", run_dir, meta.get("images_seen", 0))
        return run_dir
    log.info(
        "training on %s in %s%s",
        dev,
        precision,
        f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "",
    )
    s_init, s_latent, s_data, s_grid, s_sup = (int(s) for s in np.random.SeedSequence(seed).generate_state(5))
    latent_gen = torch.Generator(device=dev).manual_seed(s_latent)  # latents are drawn on the device
    data_gen = torch.Generator(device=dev).manual_seed(s_data)  # batch indices and augmentation

    # --- data
    crops = load_crops(crops_path, config, dev, torch.Generator().manual_seed(s_sup))
    n_crops, channels, img_size = crops.images.shape[0], crops.images.shape[1], crops.img_size
    log.info(
        "%s: %d crops of %dx%d px, %d channel(s) on %s",
        crops_path,
        n_crops,
        img_size,
        img_size,
        channels,
        dev,
    )

    # --- networks and optimisers
    G, D = build_networks(spec, img_size, channels, config, torch.Generator().manual_seed(s_init))
    G.to(dev)
    D.to(dev)
    if dev.type == "cuda":
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if config.ema_beta > 0 else None
    opt_G, opt_D = build_optimizers(G, D, config, dev)
    step_fn = InfoGANStep(G, D, opt_G, opt_D, spec, config, dev)
    prior = [torch.full((k,), 1.0 / k, device=dev) for k in spec.categorical]
    cur_nimg, n_steps, seconds, records = 0, 0, 0.0, []
    tick_sums: dict[str, torch.Tensor] = {}
    tick_steps = 0

    # --- resume
    if resume_path.exists():
        try:
            state = torch.load(resume_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(
                f"{resume_path}: unreadable resume state ({type(err).__name__}); delete it to start over"
            ) from None
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise InputError(f"{resume_path}: not an infogan-cells resume state")
        _check_same_run(resume_path, state, ident)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        if G_ema is not None:
            G_ema.load_state_dict(state["G_ema"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        if state["device_type"] == dev.type:
            latent_gen.set_state(state["latent_rng"])
            data_gen.set_state(state["data_rng"])
        else:
            log.warning(
                "%s: saved on %s, resuming on %s: batches after the resume differ from an uninterrupted run",
                resume_path,
                state["device_type"],
                dev.type,
            )
            latent_gen.manual_seed(s_latent + state["cur_nimg"])
            data_gen.manual_seed(s_data + state["cur_nimg"])
        prior = [p.to(dev) for p in state["prior"]]
        cur_nimg, n_steps, seconds = state["cur_nimg"], state["n_steps"], state["seconds"]
        tick_sums = {k: v.to(dev) for k, v in state["tick_sums"].items()}
        tick_steps = state["tick_steps"]
        if stats_path.exists():
            records = [json.loads(line) for line in stats_path.read_text().splitlines() if line.strip()]
            records = [r for r in records if r["images_seen"] <= cur_nimg]
        log.info("%s: resuming at %d images", resume_path, cur_nimg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        config_text = dump_config(resolved_config)
    else:
        config_text = yaml.safe_dump({"device": device, "train": to_dict(config)}, sort_keys=False)
    write_text_atomic(run_dir / "config.yaml", config_text)
    _write_stats(stats_path, records)

    # --- fixed latent grid
    grid, grid_cols = _grid_latent(spec, s_grid)

    # --- loop
    B = config.batch_size
    batches = _Batches(crops, config, data_gen, latent_gen)
    want_q_real = config.prior == "learned"
    prior_start = int(config.prior_warmup * config.total_images)
    pbar = None
    if progress:
        from infogan_cells.progress import progress as progress_bar  # a bar on a terminal, else log lines

        pbar = progress_bar(config.total_images, "train", unit="img", initial=cur_nimg)
    t_tick = time.perf_counter()
    with _device_flags(dev, config.tf32):
        while cur_nimg < config.total_images:
            # --- one step: every draw and update stays on the device (no host sync until a tick)
            learned = want_q_real and cur_nimg >= prior_start
            real, supervised = batches.real()
            latent = batches.latent(effective_prior(prior, config.prior_floor) if learned else None)
            terms, q_real = step_fn(real, latent, supervised, want_q_real=want_q_real, generator=data_gen)
            if G_ema is not None:
                ema_update(G_ema, G, min(config.ema_beta, (1 + n_steps) / (10 + n_steps)))
            if q_real is not None:
                update_prior(prior, q_real, config.prior_momentum)
            for k, v in terms.items():
                tick_sums[k] = tick_sums[k] + v if k in tick_sums else v.clone()
            tick_steps += 1
            prev, cur_nimg, n_steps = cur_nimg, cur_nimg + B, n_steps + 1
            if pbar is not None:
                pbar.update(B)
            done = cur_nimg >= config.total_images

            def crossed(every: int) -> bool:
                return cur_nimg // every > prev // every  # noqa: B023

            # --- snapshots (the only host syncs: the tick's means, the sample grid)
            if crossed(config.tick_images) or done:
                rec = {k: v.item() / tick_steps for k, v in tick_sums.items()}
                now = time.perf_counter()
                dt = now - t_tick
                seconds += dt
                rec = {
                    "images_seen": cur_nimg,
                    "kimg": cur_nimg / 1000,
                    "seconds": round(seconds, 3),
                    "images_per_s": round(tick_steps * B / max(dt, 1e-9), 2),
                    **rec,
                }
                if dev.type == "cuda":
                    rec["gpu_max_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
                if want_q_real:
                    rec["category_prior"] = [
                        round(v, 5) for v in effective_prior(prior, config.prior_floor)[0].tolist()
                    ]
                records.append(rec)
                _write_stats(stats_path, records)
                log.info(
                    "kimg %.1f  D %.3f  G %.3f  Q cat %.3f cont %.3f  %.0f img/s",
                    rec["kimg"],
                    rec["Loss/D/adv"],
                    rec["Loss/G/adv"],
                    rec["Loss/Q/cat"],
                    rec["Loss/Q/cont"],
                    rec["images_per_s"],
                )
                if pbar is not None:
                    pbar.set_postfix(
                        {
                            "img/s": f"{rec['images_per_s']:.0f}",
                            "D": f"{rec['Loss/D/adv']:.2f}",
                            "G": f"{rec['Loss/G/adv']:.2f}",
                            "Q": f"{rec['Loss/Q/cat']:.2f}",
                        }
                    )
                tick_sums, tick_steps = {}, 0
                t_tick = time.perf_counter()
            if crossed(config.snapshot_images) or done:
                t0 = time.perf_counter()
                _snapshot(
                    run_dir, G_ema if G_ema is not None else G, grid, grid_cols, spec, cur_nimg, records, dev
                )
                t_tick += time.perf_counter() - t0  # snapshot time is not training time

            # --- checkpoint
            if crossed(config.checkpoint_images) and not done:
                t0 = time.perf_counter()
                _save_resume(
                    resume_path,
                    {
                        "format": RESUME_FORMAT,
                        **ident,
                        "device_type": dev.type,
                        "cur_nimg": cur_nimg,
                        "n_steps": n_steps,
                        "seconds": seconds,
                        "G": G.state_dict(),
                        "D": D.state_dict(),
                        "G_ema": G_ema.state_dict() if G_ema is not None else None,
                        "opt_G": opt_G.state_dict(),
                        "opt_D": opt_D.state_dict(),
                        "latent_rng": latent_gen.get_state(),
                        "data_rng": data_gen.get_state(),
                        "prior": [p.cpu() for p in prior],
                        "tick_sums": {k: v.cpu() for k, v in tick_sums.items()},
                        "tick_steps": tick_steps,
                    },
                )
                t_tick += time.perf_counter() - t0
    if pbar is not None:
        pbar.close()

    # --- checkpoint: the final network (D's BatchNorm statistics from real crops, for Q in eval mode)
    recalibrate_batchnorm(D, crops.images, config.batch_size, torch.Generator().manual_seed(s_grid))
    labels = crops.label_names
    meta = {
        **ident,
        "channel_names": crops.channel_names,
        "img_size": img_size,
        "category_prior": [
            p.tolist()
            for p in (
                effective_prior(prior, config.prior_floor)
                if config.prior == "learned"
                else [torch.full((k,), 1.0 / k) for k in spec.categorical]
            )
        ],
        "category_labels": labels,
        "holdout": crops.holdout,
        "images_seen": cur_nimg,
        "config": config_text,
        "n_crops": n_crops,
        "device": str(dev),
        "tf32": bool(config.tf32 and dev.type == "cuda"),
        "precision": precision,
        "bf16": precision == "bf16",
        "torch": str(torch.__version__),
        "seconds": round(seconds, 3),
    }
    save_network(final_path, G=G, D=D, G_ema=G_ema, meta=meta)
    resume_path.unlink(missing_ok=True)  # the finished network supersedes it
    log.info("%s: trained on %d images in %.0f s", final_path, cur_nimg, seconds)
    return run_dir
