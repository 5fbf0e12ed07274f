"""The configs of the model and its training: the latent space, augmentation, the training run."""

from __future__ import annotations

import dataclasses

from infogan_cells.config.fields import param
from infogan_cells.errors import ConfigError

MEASURES = ("total", "log_total", "slant")  # what train.code_measures may pin a code to (model.measures)


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
    tint: float = param(
        0.0,
        help="Largest random offset of each channel on its own, as a fraction of the intensity range: "
        "a slide's stain tint (pinker, bluer) stops telling cells apart, while a parasite or nucleus "
        "far darker than its cell stays so (0 disables).",
        ge=0,
        le=0.5,
    )


@dataclasses.dataclass(frozen=True)
class HandFeatures:
    """Label-free numbers measured on each image (real or generated) and given to D's and Q's heads
    beside the convolutional features: a documented way to tell the model where a kind's signal
    lies (a dark spot in the middle of a cell, the summed DNA stain), which the trunk alone may not
    find in a CPU budget. Every number is differentiable, so G must draw what Q reads."""

    quantiles: list = param(
        default_factory=list,
        help="Quantiles (0-1) of each chosen channel inside the centre window, e.g. [0.02, 0.1, 0.5]: "
        "a low quantile is the darkest spot (a parasite, a nucleus) that a mean would average away "
        "([]: none).",
    )
    mean: bool = param(False, help="Each chosen channel's mean over the whole image (its summed intensity).")
    log: bool = param(
        False,
        help="The mean as its logarithm (of the intensity in [0, 1]): for fluorescence, where the DNA "
        "content doubles through the cell cycle and the log spaces G1, S and G2 evenly.",
    )
    centre: float = param(
        0.5, help="Side of the centre window of the quantiles, as a fraction of the image side.", gt=0, le=1
    )
    relative: bool = param(
        True,
        help="Quantiles minus the channel's median over the whole image, so a stain's overall tint "
        "(per slide, per image) does not count, only what stands out from the cell.",
    )
    weight: float = param(
        1.0,
        help="How much the numbers count beside the convolutional features: 1 gives them as much "
        "input variance as all of those together; above 1 more.",
        gt=0,
    )
    channels: list = param(
        default_factory=list,
        help="Channel names to measure, as the crop store names them (e.g. [DNA]); []: every channel. "
        "A name the store lacks is refused before training.",
    )

    def check(self, prefix: str = "") -> None:
        q = self.quantiles
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in q):
            raise ConfigError(f"config key '{prefix}quantiles': expected numbers in [0, 1], got {q!r}")
        if self.log and not self.mean:
            raise ConfigError(f"config key '{prefix}log': takes the log of the mean; set {prefix}mean too")
        if not all(isinstance(c, str) and c for c in self.channels):
            raise ConfigError(f"config key '{prefix}channels': expected channel names, got {self.channels!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.quantiles) or self.mean

    def channel_indices(self, names: list[str], prefix: str = "") -> list[int]:
        """Indices of the chosen channels among a store's ``names``; a ConfigError names the key and
        the channels the store has when one is missing."""
        if not self.channels:
            return list(range(len(names)))
        missing = [c for c in self.channels if c not in names]
        if missing:
            raise ConfigError(
                f"config key '{prefix}channels': {', '.join(missing)} not among the crops' channels "
                f"({', '.join(names)})"
            )
        return [names.index(c) for c in self.channels]

    def network_kwargs(self, indices: list[int]) -> dict:
        """What the discriminator records to rebuild the same measurement from a checkpoint."""
        return {
            "quantiles": [float(v) for v in self.quantiles],
            "mean": self.mean,
            "log": self.log,
            "centre": self.centre,
            "relative": self.relative,
            "weight": self.weight,
            "channels": indices,
        }


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
    lr_g: float = param(1e-3, help="Generator learning rate (Q, a head on D, trains with D at lr_d).", gt=0)
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
    generator_snapshots: int = param(
        1,
        help="Generators (the EMA one) kept at this many evenly spaced points of training's second "
        "half, the end included; synthesis and the analysis draw from all in equal parts, since "
        "one draws nearly one cell per category and each point others. 1: the final one only.",
        ge=1,
        le=16,
    )
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
        help="Fraction of training that samples the categorical code uniformly before the learned "
        "prior takes over (Q's early assignments are noise).",
        ge=0,
        le=1,
    )
    holdout_fraction: float = param(
        0.0,
        help="Fraction of the crops (that passed QC) kept out of training, a fixed split recorded in "
        "the checkpoint; the analysis's hold-out (memorisation, train-on-synthetic-test-on-real). "
        "0: train on all, and the analysis marks its hold-out as seen in training.",
        ge=0,
        le=0.9,
    )
    partial_labels: bool = param(
        True,
        help="When the crop store labels some crops and leaves the rest unlabelled (class sub-folders "
        "beside loose cells, an NPZ or CSV with some labels empty), every labelled crop supervises Q's "
        "first categorical code, so categories take the classes' names (semi-supervised InfoGAN); the "
        "unlabelled crops train everything else. A fully labelled store stays unsupervised (its labels "
        "score the result). false: ignore the labels.",
    )
    supervised_fraction: float = param(
        0.0,
        help="Fraction of labelled crops whose label supervises Q's categorical head (0 = unsupervised).",
        ge=0,
        le=1,
    )
    lambda_pair_mi: float = param(
        1.0,
        help="Weight of invariant information clustering (IIC) of Q's first categorical head on two "
        "diff_augment views of each real batch (0 disables). Not InfoGAN: it makes Q cluster real crops.",
        ge=0,
    )
    pair_mi_entropy: float = param(
        0.5,
        help="Weight of the entropy of the categories' marginal in the IIC term (1: mutual information; "
        "below 1 lets Q's categories be unequal in size, as on imbalanced smears; above 1: equal).",
        ge=0,
    )
    pair_neighbours: int = param(
        0,
        help="Positives of the IIC term from nearest neighbours (SCAN): each real crop's second view "
        "is one of its this-many nearest crops (cosine similarity at 16 px, found before training), "
        "not a second view of itself. Works where pixel neighbours share a kind (digits: 94% at 5); "
        "0: two views of one crop.",
        ge=0,
    )
    pair_neighbours_from: str = param(
        "pixels",
        help="Where the first neighbours come from: pixels (before training) or features (D's, "
        "first mined after pair_neighbours_refresh of training; until then the positives are "
        "two views of one crop: for crops whose kinds pixels do not tell apart).",
        choices=["pixels", "features"],
    )
    pair_neighbours_refresh: float = param(
        0.0,
        help="Mine the neighbours again from D's own features (its trunk's output on the crops) every "
        "this fraction of training: they share a kind far more often than pixels do (SCAN). 0: the "
        "pixel neighbours throughout.",
        ge=0,
        lt=1,
    )
    conditional_d: bool = param(
        False,
        help="A class-conditional D (projection discriminator, Miyato & Koyama 2018): besides real or "
        "generated, D asks whether an image looks like a real cell of its category (G's code, Q's "
        "category for real ones: Liu et al. 2020), so G must draw what tells the categories apart.",
    )
    lambda_mode_seeking: float = param(
        0.0,
        help="Weight of mode seeking (Mao et al. 2019) in G's loss: two images of the same codes "
        "must differ as much as their noise does, so a category's samples are not one cell drawn "
        "again and again. Costs G half a batch more per step. 0: off; 1 is the paper's.",
        ge=0,
    )
    lambda_mode_seeking_labelled: float | None = param(
        None,
        help="lambda_mode_seeking of a run whose labelled crops supervise Q (partial_labels, "
        "supervised_fraction): without labels varied samples cost the clustering, with them they "
        "teach. null: lambda_mode_seeking.",
        ge=0,
    )
    q_overcluster: int = param(
        0,
        help="Categories of an auxiliary over-clustering head on Q, trained only by the IIC term (IIC's "
        "recipe: about 5x the code's categories; 0: none). It shapes D's features only.",
        ge=0,
    )
    split_largest: float = param(
        0.0,
        help="Repair of merged kinds, for classes of similar size: every split_every of training, when "
        "a category holds over r times the mean share of the real crops (or one under 1/r), the "
        "largest is cut in two in Q and the smallest given up for it (training/split.py). 0: off.",
        ge=0,
    )
    split_every: float = param(
        0.2, help="Fraction of training between the checks of split_largest.", gt=0, lt=1
    )
    lambda_sup: float = param(
        1.0, help="Weight of the supervised cross-entropy on labelled real crops.", ge=0
    )
    supervised_batch: int = param(
        32,
        help="Labelled real crops per step for the supervised loss, classes equally often.",
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
    hand_features: HandFeatures = param(
        default_factory=HandFeatures,
        help="Label-free per-channel numbers of each image given to D's and Q's heads beside the "
        "convolutional features (off unless quantiles or mean is set).",
    )
    code_measures: list = param(
        default_factory=list,
        help="Pin continuous codes to label-free measures of the image, one entry per code ('<measure>:"
        "<channel>', or null for a code Q reads freely): Q reads a pinned code from that measure alone "
        "(a fixed line set by the real crops' mean and sd), so the code becomes a slider of it. Measures: "
        "total (stain above the background), log_total, slant, for a stain brighter than its background "
        "(fluorescence, ink); the channel may be left out for one channel. E.g. [log_total:DNA], [slant].",
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
        if self.pair_neighbours_from == "features" and self.pair_neighbours_refresh == 0:
            raise ConfigError(
                f"config key '{prefix}pair_neighbours_from': features are mined every "
                f"{prefix}pair_neighbours_refresh of training, which is 0; set it above 0"
            )
        if self.conditional_d and not categorical:
            raise ConfigError(
                f"config key '{prefix}conditional_d': needs a categorical code "
                f"({prefix}latent.categorical is empty); set it to false"
            )
        if self.q_overcluster > 0 and self.lambda_pair_mi <= 0:
            raise ConfigError(
                f"config key '{prefix}q_overcluster': the over-clustering head is trained by the "
                f"IIC term only; set {prefix}lambda_pair_mi above 0 (or q_overcluster to 0)"
            )
        if self.split_largest and (self.split_largest <= 1 or not categorical):
            raise ConfigError(
                f"config key '{prefix}split_largest': {self.split_largest} must be 0 (off) or above "
                f"1 (a share of the mean), with a categorical code"
            )
        measures = self.code_measures
        if (
            not isinstance(measures, list)
            or len(measures) > self.latent.n_continuous
            or not all(
                m is None or (isinstance(m, str) and m.partition(":")[0] in MEASURES) for m in measures
            )
        ):
            raise ConfigError(
                f"config key '{prefix}code_measures': expected at most {prefix}latent.n_continuous "
                f"({self.latent.n_continuous}) entries, each null or '<measure>:<channel>' with a measure "
                f"among {', '.join(MEASURES)}; got {self.code_measures!r}"
            )
        if self.supervised_fraction > 0 and not categorical:
            raise ConfigError(
                f"config key '{prefix}supervised_fraction': semi-supervision needs a categorical "
                f"code ({prefix}latent.categorical is empty)"
            )
