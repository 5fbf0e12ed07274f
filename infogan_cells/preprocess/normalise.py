"""Per-channel intensity normalisation and stain transfer: arrays in, new arrays out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from infogan_cells.data.images import pil_to_array

log = logging.getLogger(__name__)

#: CIELAB mean (row 0) and standard deviation (row 1) of (L, a, b) of a Giemsa-stained thin
#: smear: the average of the per-image statistics of the six BBBC041 training images in
#: ../shared/data/bbbc041 after percentile normalisation (0.5, 99.5). The default stain reference.
GIEMSA_REFERENCE = np.array([[69.04, 2.27, -5.57], [32.37, 4.79, 8.49]])

#: Long side, in pixels, of the regular sample of an image used to find its background.
GRID = 200


def channel_limits(
    image: np.ndarray, *, method: str = "percentile", percentiles: Sequence[float] = (0.5, 99.5)
) -> tuple[np.ndarray, np.ndarray]:
    """The values mapped to 0 and 255, per channel: ``(low (C,), high (C,))`` float64.

    ``image`` is (M, N, C) or a stack (K, M, N, C) of any real dtype. Large images are
    measured on a regular subsample of about two million pixels.
    """
    c = image.shape[-1]
    if method == "none":
        if image.dtype == bool:
            top = 1.0
        elif np.issubdtype(image.dtype, np.integer):
            top = float(np.iinfo(image.dtype).max)
        else:
            top = 1.0
        return np.zeros(c), np.full(c, top)
    pixels = image.reshape(-1, c)
    step = max(1, len(pixels) // 2_000_000)
    pixels = pixels[::step]
    if np.issubdtype(image.dtype, np.integer) and pixels.size:
        base = pixels.min(axis=0).astype(np.int64)
        span = int((pixels.max(axis=0).astype(np.int64) - base).max()) + 1
        if span <= 1 << 16:
            hist = np.stack(
                [np.bincount(pixels[:, k].astype(np.int64) - base[k], minlength=span) for k in range(c)]
            )
            lo, hi = histogram_levels(hist, percentiles)
            return lo + base, hi + base
    pixels = pixels.astype(np.float64)
    lo, hi = np.percentile(pixels, list(percentiles), axis=0) if pixels.size else (np.zeros(c), np.ones(c))
    return lo, hi


def rescale_to_uint8(image: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map ``low``..``high`` (per channel, last axis) linearly onto 0..255, clipped: uint8, same shape."""
    low = np.asarray(low, np.float32)
    scale = np.where(high > low, 255.0 / np.maximum(np.asarray(high, np.float32) - low, 1e-12), 0.0)
    out = (image.astype(np.float32) - low) * scale.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def normalise(
    image: np.ndarray, *, method: str = "percentile", percentiles: Sequence[float] = (0.5, 99.5)
) -> np.ndarray:
    """Per-channel normalisation of an (M, N, C) image (or a (K, M, N, C) stack) to uint8."""
    lo, hi = channel_limits(image, method=method, percentiles=percentiles)
    return rescale_to_uint8(image, lo, hi)


def background_level(image: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """The background colour of an (M, N, C) image or a (K, M, N, C) stack: (C,) float64.

    The per-channel median of the pixels outside every box (sampled on a regular grid), or,
    without boxes or when they cover nearly all the image, of the border pixels. Dense smears
    can have cells on most of the border, hence the boxes.
    """
    if image.ndim == 3 and boxes is not None and len(boxes):
        step = max(1, max(image.shape[:2]) // GRID)
        found = outside_boxes_median(image[::step, ::step], boxes, step, step)
        if found is not None:
            return found
    return border_median(image)


def lab_stats(rgb: np.ndarray) -> np.ndarray:
    """CIELAB mean and standard deviation of an RGB uint8 image (..., 3): (2, 3) float64."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, np.uint8).reshape(-1, 1, 3)).reshape(-1, 3)
    return np.stack([lab.mean(axis=0), lab.std(axis=0)])


def reinhard(rgb: np.ndarray, stats: np.ndarray, reference: np.ndarray = GIEMSA_REFERENCE) -> np.ndarray:
    """Reinhard colour transfer of RGB uint8 pixels (..., 3) whose image has LAB ``stats``.

    Each LAB channel becomes ``(x - mean) / std * ref_std + ref_mean``; returns uint8, same shape.
    """
    from skimage.color import lab2rgb, rgb2lab

    shape = rgb.shape
    lab = rgb2lab(np.asarray(rgb, np.uint8).reshape(-1, 1, 3))
    lab = (lab - stats[0]) / np.maximum(stats[1], 1e-6) * reference[1] + reference[0]
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, which is what we want
        warnings.simplefilter("ignore", UserWarning)
        out = lab2rgb(lab)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8).reshape(shape)


def outside_boxes_median(
    grid: np.ndarray, boxes: np.ndarray, row_step: float, col_step: float
) -> np.ndarray | None:
    """Median colour of a sampled image's pixels outside the boxes; None if under 5% are."""
    outside = np.ones(grid.shape[:2], bool)
    for r0, c0, r1, c1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        outside[
            max(0, int(r0 // row_step)) : max(0, int(np.ceil(r1 / row_step))),
            max(0, int(c0 // col_step)) : max(0, int(np.ceil(c1 / col_step))),
        ] = False
    if outside.mean() < 0.05:
        return None
    return np.median(grid[outside], axis=0).astype(np.float64)


def border_median(image: np.ndarray) -> np.ndarray:
    stack = image if image.ndim == 4 else image[None]
    c = stack.shape[-1]
    ring = np.concatenate(
        [
            stack[:, 0].reshape(-1, c),
            stack[:, -1].reshape(-1, c),
            stack[:, :, 0].reshape(-1, c),
            stack[:, :, -1].reshape(-1, c),
        ]
    )
    return np.median(ring, axis=0).astype(np.float64)


def histogram_levels(hist: np.ndarray, percentiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Levels (bin indices) at two percentiles of per-channel histograms (C, B)."""
    cum = np.cumsum(hist, axis=1, dtype=np.float64)
    total = cum[:, -1:]
    lo = np.argmax(cum >= np.maximum(total * percentiles[0] / 100, 1), axis=1)
    hi = np.argmax(cum >= np.maximum(total * percentiles[1] / 100, 1), axis=1)
    return lo.astype(np.float64), hi.astype(np.float64)


def planes(image) -> list[Image.Image]:
    """PIL images covering the channels of an (M, N, C) uint8 array (RGB, or one L per channel)."""
    if isinstance(image, Image.Image):
        return [image]
    image = np.ascontiguousarray(image)
    if image.shape[2] == 3:
        return [Image.fromarray(image, "RGB")]
    return [Image.fromarray(np.ascontiguousarray(image[:, :, k]), "L") for k in range(image.shape[2])]


def subsample(image) -> np.ndarray:
    """About 250,000 pixels (P, C) of an image or stack, for colour statistics."""
    if isinstance(image, Image.Image):
        image = pil_to_array(image.reduce(4) if min(image.size) >= 64 else image)
    pixels = image.reshape(-1, image.shape[-1])
    return pixels[:: max(1, len(pixels) // 250_000)]
