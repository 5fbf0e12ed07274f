"""The pipeline's configuration: one frozen dataclass per stage, composed into one ``Config``.

The dataclasses are the single description of every parameter: their field metadata
(``help``, ``choices``, ``ge``/``le``) checks values, writes the JSON schema that Snakemake
validates against (``infogan-cells schema``), and documents each key. One YAML file serves
both ``snakemake --configfile FILE`` and ``infogan-cells <stage> --config FILE``; each stage
reads its own section.

Runtime settings (threads, which GPU) are not experiment config; ``device`` is the one
exception, since it changes numerics.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from infogan_cells.errors import ConfigError


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    choices: Sequence | None = None,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a description and the checks its value must pass."""
    meta = {"help": help, "choices": choices, "ge": ge, "le": le, "gt": gt, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------
# Stage configs


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Where the cells come from."""

    path: str = param(
        "simulate",
        help="Input: 'simulate' for the built-in smear simulator, "
        "or a path (BBBC041 JSON, CSV of boxes, folder of images, NPZ, TIFF folder, IDX file).",
    )
    format: str = param(
        "auto",
        help="Input format; 'auto' guesses from the path.",
        choices=["auto", "bbbc041", "csv", "folder", "tiff", "npz", "idx"],
    )
    segment: bool = param(False, help="Find cells by segmentation in whole images that have no boxes.")


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """The procedural Giemsa-like smear generator (the default input)."""

    n_images: int = param(12, help="Number of smear images to generate.", ge=1)
    seed: int = param(0, help="Seed: the same seed gives byte-identical images and boxes.", ge=0)
    image_rows: int = param(480, help="Image height in pixels.", ge=64)
    image_cols: int = param(640, help="Image width in pixels.", ge=64)
    cell_density: float = param(
        0.55, help="Fraction of the image area covered by cells (about).", gt=0, le=0.9
    )
    rbc_radius: float = param(18.0, help="Mean red blood cell radius in pixels.", ge=4)
    stage_fractions: dict = param(
        default_factory=lambda: {"ring": 0.08, "trophozoite": 0.06, "schizont": 0.04, "gametocyte": 0.03},
        help="Fraction of red blood cells infected at each stage (the rest are uninfected); "
        "real smears are ~98% uninfected.",
    )
    leukocyte_fraction: float = param(0.02, help="Fraction of cells that are leukocytes.", ge=0, le=0.5)

    STAGES = ("ring", "trophozoite", "schizont", "gametocyte")

    def check(self, prefix: str = "") -> None:
        for name, frac in self.stage_fractions.items():
            if name not in self.STAGES:
                raise ConfigError(
                    f"config key '{prefix}stage_fractions.{name}': unknown stage "
                    f"(known: {', '.join(self.STAGES)})"
                )
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or frac < 0:
                raise ConfigError(f"config key '{prefix}stage_fractions.{name}': expected a number >= 0")
        if sum(self.stage_fractions.values()) > 1:
            raise ConfigError(f"config key '{prefix}stage_fractions': the fractions add up to more than 1")


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """Normalise, centre, align, quality-filter and store single-cell crops."""

    size: int = param(64, help="Output crop side in pixels (the networks support 32, 64 and 128).", ge=8)
    margin: float = param(
        0.15, help="Context margin added around each box, as a fraction of its side.", ge=0, le=2
    )
    normalise: str = param(
        "percentile", help="Per-image, per-channel intensity normalisation.", choices=["percentile", "none"]
    )
    percentiles: list = param(
        default_factory=lambda: [0.5, 99.5], help="Low and high percentiles mapped to 0 and 255."
    )
    stain: str = param(
        "none",
        help="Colour normalisation to a reference (Reinhard: LAB mean/std).",
        choices=["none", "reinhard"],
    )
    stain_reference: str | None = param(
        None,
        help="Reference RGB image for stain normalisation (default: built-in Giemsa reference statistics).",
    )
    align: bool = param(False, help="Rotate each cell so its major axis is horizontal.")
    mask_background: bool = param(False, help="Set pixels outside the cell's mask to the background level.")
    keep_failed: bool = param(False, help="Keep crops that fail QC (flagged) instead of dropping them.")
    qc_size_ratio: float = param(
        5.0, help="Reject boxes whose area is more than this factor away from the set's median.", gt=1
    )
    qc_blur_min: float = param(
        0.0,
        help="Reject crops whose variance of the Laplacian is below this (0 disables the blur check).",
        ge=0,
    )
    qc_cell_count: bool = param(True, help="Reject boxes holding more or fewer than one cell.")
    workers: int = param(1, help="Images cropped in parallel within one job.", ge=1)
    # Cell scale: the crop store records each crop's scale; these keep absolute size and units.
    window_px: int | None = param(
        None,
        help="Fixed window side in source pixels, the same for every cell "
        "(absolute size survives: each crop pixel is window_px / size source "
        "pixels); null: each window scales with its box (margin).",
        ge=1,
    )
    pixel_size_um: float | None = param(
        None,
        help="Pixel size of the input images in micrometres, carried "
        "into the crop store and the synthetic set's HDF5 and TIFF metadata; "
        "null: unknown.",
        gt=0,
    )

    def check(self, prefix: str = "") -> None:
        p = self.percentiles
        if (
            len(p) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            or not 0 <= p[0] < p[1] <= 100
        ):
            raise ConfigError(
                f"config key '{prefix}percentiles': expected [low, high] with "
                f"0 <= low < high <= 100, got {p!r}"
            )
        if self.pixel_size_um is not None and not math.isfinite(self.pixel_size_um):
            raise ConfigError(
                f"config key '{prefix}pixel_size_um': expected a positive number of "
                f"micrometres, got {self.pixel_size_um!r}"
            )

    @property
    def crop_pixel_size_um(self) -> float | None:
        """Size of one crop pixel in micrometres: known with a fixed window and a pixel size."""
        if self.window_px is None or self.pixel_size_um is None:
            return None
        return self.pixel_size_um * self.window_px / self.size


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """The latent space: noise, categorical codes and continuous codes.

    The one description used by sampling, the networks, the losses, traversals and synthesis.
    """

    z_dim: int = param(62, help="Size of the incompressible noise z ~ N(0, 1).", ge=0)
    categorical: list = param(
        default_factory=lambda: [10], help="Sizes of the categorical codes (one entry per code)."
    )
    n_continuous: int = param(2, help="Number of continuous codes c ~ U(-r, r).", ge=0)
    continuous_range: float = param(1.0, help="Half-width r of the continuous codes' range.", gt=0)

    def check(self, prefix: str = "") -> None:
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in self.categorical):
            raise ConfigError(
                f"config key '{prefix}categorical': expected a list of integers >= 2, "
                f"got {self.categorical!r}"
            )
        if self.z_dim + self.n_cat_dims + self.n_continuous == 0:
            raise ConfigError(f"config key '{prefix.rstrip('.')}': the latent space is empty")

    @property
    def n_cat_dims(self) -> int:
        return int(sum(self.categorical))

    @property
    def input_dim(self) -> int:
        """Length of the generator's input vector: z, one-hot codes, continuous codes."""
        return self.z_dim + self.n_cat_dims + self.n_continuous


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of real crops on the training device."""

    rot90: bool = param(True, help="Random 90-degree rotations (cells have no canonical orientation).")
    flip: bool = param(True, help="Random horizontal/vertical flips.")
    shift: int = param(2, help="Largest random shift in pixels (0 disables).", ge=0)
    rotate: float = param(
        0.0, help="Largest random rotation in degrees, any angle, bilinear (0 disables).", ge=0, le=180
    )
    scale: float = param(
        0.0, help="Largest random zoom as a fraction: 0.1 draws 0.9x to 1.1x (0 disables).", ge=0, le=0.5
    )
    brightness: float = param(
        0.0,
        help="Largest random brightness offset as a fraction of the intensity "
        "range, the same for every channel (0 disables).",
        ge=0,
        le=0.5,
    )
    contrast: float = param(
        0.0,
        help="Largest random contrast change as a fraction: 0.2 scales each image's "
        "deviation from its mean by 0.8x to 1.2x (0 disables).",
        ge=0,
        le=0.9,
    )
    saturation: float = param(
        0.0,
        help="Largest random saturation change as a fraction: scales each pixel's "
        "deviation from its mean over channels (0 disables; no effect on one channel).",
        ge=0,
        le=0.9,
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """InfoGAN training. Budgets are counted in images seen, not epochs."""

    latent: LatentSpec = param(
        default_factory=lambda: LatentSpec(z_dim=16),
        help="The latent space "
        "(little noise: with a large z, z rather than the category decides the cell's kind).",
    )
    seeds: list = param(
        default_factory=lambda: [0], help="Training seeds; the workflow trains one run per seed."
    )
    total_images: int = param(
        20480,
        help="Training length in real images shown to D. The default trains "
        "for a few minutes on 2 CPU cores; a GPU run wants 1-5 million.",
        ge=1,
    )
    batch_size: int = param(
        128,
        help="Batch size, at least 2 for BatchNorm (lambda_pair_mi needs ~10 images per category per batch).",
        ge=2,
    )
    lr_g: float = param(1e-3, help="Generator (and Q) learning rate.", gt=0)
    lr_d: float = param(2e-4, help="Discriminator learning rate.", gt=0)
    beta1: float = param(0.5, help="Adam beta1.", ge=0, le=1)
    beta2: float = param(0.999, help="Adam beta2.", ge=0, le=1)
    loss: str = param("nonsaturating", help="GAN loss.", choices=["nonsaturating", "hinge"])
    lambda_cat: float = param(1.0, help="Weight of the categorical information loss.", ge=0)
    lambda_cont: float = param(0.1, help="Weight of the continuous information loss (Gaussian NLL).", ge=0)
    info_trains_trunk: bool = param(
        True, help="The information loss also trains D's shared trunk (the InfoGAN paper: yes)."
    )
    spectral_norm: bool = param(False, help="Spectral normalisation on D's layers.")
    g_channels: int = param(
        16,
        help="Generator width (channels of its last hidden layer); 16 keeps 64 px "
        "crops fast on a CPU, a GPU run wants 64.",
        ge=4,
    )
    d_channels: int = param(
        16, help="Discriminator width (channels of its first layer); a GPU run wants 64.", ge=4
    )
    ema_beta: float = param(0.999, help="EMA of the generator's weights (0 disables).", ge=0, le=1)
    prior: str = param(
        "uniform",
        help="Categorical prior: uniform, or learned from Q's assignments of "
        "real crops as training goes (finds rare classes).",
        choices=["uniform", "learned"],
    )
    prior_momentum: float = param(0.99, help="Momentum of the learned prior's running estimate.", ge=0, le=1)
    prior_floor: float = param(
        0.01, help="Smallest probability a learned prior gives any category.", ge=0, le=1
    )
    prior_warmup: float = param(
        0.2,
        help="Fraction of training that samples the categorical code uniformly "
        "before the learned prior takes over (Q's early assignments are noise).",
        ge=0,
        le=1,
    )
    holdout_fraction: float = param(
        0.0,
        help="Fraction of the crops (that passed QC) kept out of training, "
        "a fixed split recorded in the checkpoint; the analysis uses them as its "
        "hold-out (memorisation check, train-on-synthetic-test-on-real). 0: train on "
        "all, and the analysis marks its hold-out as seen in training.",
        ge=0,
        le=0.9,
    )
    partial_labels: bool = param(
        True,
        help="When the crop store labels some crops and leaves the rest "
        "unlabelled (class sub-folders beside loose cells, an NPZ or CSV with some labels "
        "empty), every labelled crop supervises Q's first categorical code, so categories "
        "take the classes' names (semi-supervised InfoGAN); the unlabelled crops train "
        "everything else. A fully labelled store stays unsupervised (its labels score the "
        "result). false: ignore the labels.",
    )
    supervised_fraction: float = param(
        0.0,
        help="Fraction of labelled crops whose label supervises Q's categorical head (0 = unsupervised).",
        ge=0,
        le=1,
    )
    lambda_pair_mi: float = param(
        1.0,
        help="Weight of invariant information clustering (IIC) of Q's first "
        "categorical head on two diff_augment views of each real batch (0 disables; "
        "needs diff_augment). Not part of InfoGAN: it makes Q cluster real crops.",
        ge=0,
    )
    pair_mi_entropy: float = param(
        0.5,
        help="Weight of the entropy of the categories' marginal in the IIC "
        "term (1: mutual information; below 1 lets Q's categories on real crops be "
        "unequal in size, as on imbalanced smears; above 1 pushes them to be equal).",
        ge=0,
    )
    q_overcluster: int = param(
        0,
        help="Categories of an auxiliary over-clustering head on Q, trained only by "
        "the IIC term (IIC's recipe: about 5x the categories of the code; 0: none). It "
        "shapes D's features; the code's own head is what the analysis reads.",
        ge=0,
    )
    lambda_sup: float = param(
        1.0, help="Weight of the supervised cross-entropy on labelled real crops.", ge=0
    )
    supervised_batch: int = param(
        32,
        help="Labelled real crops per step for the supervised loss, drawn with "
        "classes equally often (semi-supervised runs only).",
        ge=1,
    )
    augment: AugmentConfig = param(
        default_factory=AugmentConfig,
        help="On-device augmentation of real crops (G learns the augmented distribution).",
    )
    diff_augment: AugmentConfig = param(
        default_factory=lambda: AugmentConfig(rot90=True, flip=True, shift=2),
        help="Differentiable augmentation of every image D and Q see, real and generated (DiffAugment): G "
        "still learns the un-augmented distribution, D overfits small sets less, and the codes cannot "
        "encode what these transforms change (position, orientation, size). All off: none.",
    )
    tick_images: int = param(4096, help="Images between progress records in stats.jsonl.", ge=1)
    snapshot_images: int = param(10240, help="Images between sample grids.", ge=1)
    checkpoint_images: int = param(10240, help="Images between resume checkpoints.", ge=1)
    compile: bool = param(False, help="torch.compile the networks (CUDA only).")
    tf32: bool = param(True, help="Allow TF32 matrix multiplies on CUDA (recorded in the run).")
    precision: str = param(
        "auto",
        help="Mixed precision: auto (bf16 autocast on a CUDA device that supports "
        "it, fp32 elsewhere), fp32, or bf16 (autocast on any device, the CPU too). Losses "
        "and Q's last layer stay fp32 either way.",
        choices=["auto", "fp32", "bf16"],
    )

    def check(self, prefix: str = "") -> None:
        """The rules between keys, so a bad combination is refused when the config is read (and the
        workflow fails at parse time), not when training starts after every crop job has run."""
        if not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds
        ):
            raise ConfigError(
                f"config key '{prefix}seeds': expected a non-empty list of integers >= 0, got {self.seeds!r}"
            )
        if self.batch_size < 2:
            raise ConfigError(
                f"config key '{prefix}batch_size': {self.batch_size} is too small "
                "(BatchNorm needs batches of 2 or more)"
            )
        categorical = self.latent.categorical
        if self.prior == "learned":
            if not categorical:
                raise ConfigError(
                    f"config key '{prefix}prior': 'learned' needs a categorical code "
                    f"({prefix}latent.categorical is empty)"
                )
            k = max(categorical)
            if k * self.prior_floor > 1:
                raise ConfigError(
                    f"config key '{prefix}prior_floor': {self.prior_floor} x {k} categories "
                    f"exceeds 1 (with {prefix}prior: learned the floor must be at most 1/{k})"
                )
        if self.lambda_pair_mi > 0:
            if not categorical:
                raise ConfigError(
                    f"config key '{prefix}lambda_pair_mi': needs a categorical code "
                    f"({prefix}latent.categorical is empty); set it to 0"
                )
            if not any(dataclasses.astuple(self.diff_augment)):
                raise ConfigError(
                    f"config key '{prefix}lambda_pair_mi': needs diff_augment (two different "
                    f"views of each real crop), but every {prefix}diff_augment transform is off; "
                    "turn one on or set lambda_pair_mi to 0"
                )
        if self.q_overcluster > 0 and self.lambda_pair_mi <= 0:
            raise ConfigError(
                f"config key '{prefix}q_overcluster': the over-clustering head is trained by the "
                f"IIC term only; set {prefix}lambda_pair_mi above 0 (or q_overcluster to 0)"
            )
        if self.supervised_fraction > 0 and not categorical:
            raise ConfigError(
                f"config key '{prefix}supervised_fraction': semi-supervision needs a categorical "
                f"code ({prefix}latent.categorical is empty)"
            )


@dataclasses.dataclass(frozen=True)
class AnalyseConfig:
    """Latent-factor analysis, quality measures and reports."""

    traversal_steps: int = param(9, help="Steps along each continuous code in traversals.", ge=2)
    traversal_samples: int = param(64, help="Generated images per traversal step for morphology.", ge=1)
    n_synthetic: int = param(2000, help="Synthetic crops used for the quality measures.", ge=10)
    holdout_fraction: float = param(
        0.2,
        help="Fraction of real crops held out for the memorisation "
        "check and train-on-synthetic-test-on-real.",
        gt=0,
        le=0.9,
    )
    encoder_epochs: int = param(5, help="Epochs of the feature encoder trained on the real crops.", ge=1)
    classifier_steps: int = param(
        400,
        help="Training batches (of 64) of the small CNN of train-on-synthetic-"
        "test-on-real, and of its train-on-real twin.",
        ge=1,
    )
    nearest: int = param(16, help="Nearest real crops shown per category.", ge=1)
    k_nn: int = param(5, help="k of the k-NN precision and recall.", ge=1)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Bulk synthesis of labelled synthetic cells."""

    n: int = param(2000, help="Size of the whole synthetic data set.", ge=1)
    shards: int = param(2, help="Number of shards (one job each).", ge=1)
    seed: int = param(0, help="Base seed: sample k uses seed + k.", ge=0)
    proportions: str = param(
        "uniform", help="Category mix: uniform, or the learned prior.", choices=["uniform", "prior"]
    )
    labels: list = param(
        default_factory=list,
        help="Make only these label names (from category_map.csv); empty = every category.",
    )
    continuous: str = param(
        "uniform", help="Continuous codes drawn uniformly or on a fixed grid.", choices=["uniform", "grid"]
    )
    truncation: float = param(1.0, help="Scale of z (truncation trick; 1 = none).", gt=0, le=1)
    compression: str = param("gzip", help="HDF5 compression.", choices=["gzip", "lzf", "blosc", "none"])
    batch_size: int = param(256, help="Generator batch size (does not change any sample).", ge=1)
    micro_batch: int = param(
        64,
        help="Rows of every generator forward pass; partial passes are padded to "
        "it. Part of the data set's identity (like seed): changing it can change "
        "pixels by one grey level, batch_size and shards cannot.",
        ge=1,
    )
    grid_steps: int = param(5, help="Steps per continuous code when continuous='grid'.", ge=2)
    tiff: bool = param(True, help="Also write per-category multi-page TIFF stacks.")
    tiff_per_image: bool = param(
        False,
        help="With TIFF output, also write one TIFF per image into "
        "<tiff dir>/images/<label>/<block of 1000>/.",
    )
    use_ema: bool = param(True, help="Use the EMA generator when the run has one.")
    min_confidence: float = param(
        0.0,
        help="Keep only samples that Q assigns to their own category with at "
        "least this probability: sample k tries seeds seed + k + j * 2^32 "
        "(j = 0, 1, ..., at most 100 draws) and keeps the first that passes; "
        "0 keeps every first draw. Q's probability is stored in obs/confidence.",
        ge=0,
        lt=1,
    )
    score_confidence: bool = param(
        False,
        help="Score every sample with Q into obs/confidence also when "
        "min_confidence is 0 (one discriminator pass per image, about half the "
        "generator's cost; off: obs/confidence is NaN unless min_confidence is set).",
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole pipeline's configuration."""

    device: str = param("auto", help="Compute device: auto, cpu, cuda, cuda:N or mps.")
    input: InputConfig = param(default_factory=InputConfig, help="Input data.")
    simulate: SimulateConfig = param(default_factory=SimulateConfig, help="Smear simulator.")
    crop: CropConfig = param(default_factory=CropConfig, help="Preprocess and crop.")
    train: TrainConfig = param(default_factory=TrainConfig, help="InfoGAN training.")
    analyse: AnalyseConfig = param(default_factory=AnalyseConfig, help="Latent-factor analysis and reports.")
    synthesis: SynthConfig = param(default_factory=SynthConfig, help="Bulk synthesis.")


# --------------------------------------------------------------------------------------
# Building and checking


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, tp: Any, meta: Mapping) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    elif tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        value = list(value)
    elif tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        value = dict(value)
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(meta['choices'])}")
    for bound, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not ok(value, b):
            raise ConfigError(f"config key '{key}': {value!r} must be {word} {b}")
    return value


def from_mapping(cls: type, data: Mapping | None, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested mapping, rejecting unknown keys and bad values."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config key '{prefix}{unknown[0]}' does not exist "
            f"(known keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if _is_dataclass_type(tp):
            kwargs[name] = from_mapping(tp, value, key + ".")
        else:
            kwargs[name] = _check_value(key, value, tp, fields[name].metadata)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)  # cross-field rules, raising ConfigError
    return obj


def to_dict(obj: Any) -> dict:
    """The config as plain nested dicts and lists (for YAML, JSON and HDF5 attributes)."""
    return dataclasses.asdict(obj)


def _deep_update(base: dict, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def parse_set_option(item: str) -> dict:
    """Turn ``train.latent.z_dim=32`` into ``{"train": {"latent": {"z_dim": 32}}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: cannot parse the value: {err}") from None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_config_file(path: str | Path | None) -> dict:
    """Read a YAML config file into a mapping (empty for ``None``)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return dict(data)


def load_config(path: str | Path | None = None, overrides: Sequence[Mapping] = ()) -> Config:
    """Load a config file, apply ``overrides`` (nested mappings) in order, and check everything.

    Keys left out take their defaults. Raises :class:`ConfigError` naming the first bad key.
    """
    data = read_config_file(path)
    for extra in overrides:
        data = _deep_update(data, extra)
    try:
        return from_mapping(Config, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def dump_config(config: Any) -> str:
    """The config as YAML text (the resolved config written beside every output)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# --------------------------------------------------------------------------------------
# JSON schema (draft 2020-12) generated from the dataclasses


def _schema_for(tp: Any, meta: Mapping, default: Any) -> dict:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    nullable = False
    if origin in (typing.Union, types.UnionType):
        nullable = type(None) in args
        (tp,) = [a for a in args if a is not type(None)]
    if _is_dataclass_type(tp):
        return schema_of(tp, meta.get("help"))
    json_type = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }[tp]
    out: dict = {"type": [json_type, "null"] if nullable else json_type, "description": meta["help"]}
    if meta.get("choices") is not None:
        out["enum"] = list(meta["choices"])
    if meta.get("ge") is not None:
        out["minimum"] = meta["ge"]
    if meta.get("gt") is not None:
        out["exclusiveMinimum"] = meta["gt"]
    if meta.get("le") is not None:
        out["maximum"] = meta["le"]
    if meta.get("lt") is not None:
        out["exclusiveMaximum"] = meta["lt"]
    if default is not dataclasses.MISSING:
        out["default"] = default
    return out


def schema_of(cls: type = Config, description: str | None = None) -> dict:
    """The JSON schema (draft 2020-12) of a config dataclass, with a description per key."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING and not _is_dataclass_type(hints[f.name]):
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        props[f.name] = _schema_for(hints[f.name], f.metadata, default)
    out = {
        "type": "object",
        "description": description or (cls.__doc__ or "").strip().splitlines()[0],
        "properties": props,
        "additionalProperties": False,
    }
    if cls is Config:
        out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **out}
    return out
