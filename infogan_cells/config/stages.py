"""The configs of analysis and synthesis, and ``Config``, which composes every stage's."""

from __future__ import annotations

import dataclasses

from infogan_cells.config.fields import param
from infogan_cells.config.inputs import CropConfig, InputConfig, SimulateConfig
from infogan_cells.config.training import TrainConfig


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
    classifier_seeds: int = param(
        3,
        help="Small CNNs trained per classifier figure, each from its own seed; a figure is their "
        "mean, its sd beside it (one classifier's figure can swing by 0.2 with its seed).",
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
