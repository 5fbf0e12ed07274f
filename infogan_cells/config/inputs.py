"""The configs of the stages up to the crop store: the input, the simulator, the crop stage."""

from __future__ import annotations

import dataclasses
import math

from infogan_cells.config.fields import param
from infogan_cells.errors import ConfigError


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
    mask_fill: str = param(
        "background",
        help="What mask_background puts outside the cell: background (the image's background "
        "level) or median (the cell's own median colour, the mask first eroded by 2 px so the "
        "blurred rim goes too: then no dark rim or black surround is darker than a parasite).",
        choices=["background", "median"],
    )
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
