"""Shape, intensity and focus of the one cell in each crop, for real and generated crops alike.

:func:`foreground_mask` finds the cell without knowing the stain: the background level of each
channel is the median of the crop's border pixels, a pixel's contrast is its largest distance
from that level over the channels (cells darker than a bright field, as in Giemsa brightfield,
and cells brighter than a dark field, as in fluorescence, look the same), an Otsu threshold on
the contrast splits cell from background, holes are filled (the central pallor of red blood
cells is as bright as the background) and the largest component is kept.

:func:`measure_morphology` turns the masks into one row of measurements per crop. The shape
measures come from the mask's image moments, computed for the whole batch at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from infogan_cells.preprocess.qc import fill_holes, laplacian, otsu_index

log = logging.getLogger(__name__)

#: Crops whose contrast never exceeds this many grey levels are treated as holding no cell.
MIN_CONTRAST = 8.0

#: Columns used as a feature vector (k-means baseline, Fréchet distance): everything but the
#: raw orientation angle, which is circular and enters through its double-angle cosine and sine.
FEATURES = (
    "area",
    "eccentricity",
    "orientation_cos2",
    "orientation_sin2",
    "intensity",
    "focus",
    "centroid_offset",
)


def _otsu_thresholds(values: np.ndarray, nbins: int = 256) -> np.ndarray:
    """Otsu's threshold of each row of ``values`` (N, P), from a histogram over the row's range."""
    lo = values.min(axis=1, keepdims=True)
    hi = values.max(axis=1, keepdims=True)
    width = np.where(hi > lo, (hi - lo) / nbins, 1.0)
    idx = np.clip(((values - lo) / width).astype(np.int64), 0, nbins - 1)
    hist = np.zeros((values.shape[0], nbins))
    np.add.at(hist, (np.arange(values.shape[0])[:, None], idx), 1.0)
    centres = lo + (np.arange(nbins) + 0.5) * width
    best = otsu_index(hist, centres)
    return lo[:, 0] + (best + 1) * width[:, 0]


def ink_mask(images: np.ndarray) -> np.ndarray:
    """The pixels that stand out from each crop's background, holes left open (the strokes of a
    digit, the stained parts of a cell): (N, H, W) bool, all False where the crop's contrast
    stays below :data:`MIN_CONTRAST`.

    Parameters
    ----------
    images : (N, H, W, C) uint8 ndarray
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    n = images.shape[0]
    x = images.astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)  # (N, P, C)
    background = np.median(border, axis=1)  # (N, C)
    contrast = np.abs(x - background[:, None, None, :]).max(axis=3)  # (N, H, W)
    thresholds = _otsu_thresholds(contrast.reshape(n, -1))
    masks = contrast > thresholds[:, None, None]
    masks &= (contrast.reshape(n, -1).max(axis=1) >= MIN_CONTRAST)[:, None, None]
    return masks


def foreground_mask(images: np.ndarray) -> np.ndarray:
    """The cell's mask in each crop: :func:`ink_mask` with its holes filled, largest component.

    Parameters
    ----------
    images : (N, H, W, C) uint8 ndarray

    Returns
    -------
    masks : (N, H, W) bool ndarray; all False where a crop shows no cell (its contrast stays
        below :data:`MIN_CONTRAST`).
    """
    masks = fill_holes(ink_mask(images))
    n = len(masks)
    for i in range(n):
        labels, n_comp = ndi.label(masks[i])
        if n_comp > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            masks[i] = labels == np.argmax(sizes)
    return masks


def measure_morphology(
    images: np.ndarray,
    *,
    channel_names: Sequence[str] | None = None,
    masks: np.ndarray | None = None,
    chunk: int = 512,
) -> pd.DataFrame:
    """Measure the cell in each crop.

    Parameters
    ----------
    images : (N, H, W, C) uint8 ndarray
    channel_names : names of the C channels for the per-channel intensity columns
        (default ``ch0``, ``ch1``...).
    masks : (N, H, W) bool ndarray, optional
        The cells' masks; found with :func:`foreground_mask` when not given.
    chunk : crops measured at once (bounds the memory used).

    Returns
    -------
    DataFrame with N rows and the columns

    * ``area``: mask pixels;
    * ``eccentricity``: of the ellipse with the mask's second moments, 0 for a disk, towards 1
      for a line;
    * ``orientation``: angle in radians, in (-pi/2, pi/2], between the row axis and the major
      axis (as ``skimage.measure.regionprops``); circular, so also ``orientation_cos2`` and
      ``orientation_sin2``, its double angle's cosine and sine weighted by the eccentricity
      (an angle means little for a round cell);
    * ``intensity``: mean over the mask and the channels, in grey levels; ``intensity_<name>``
      per channel;
    * ``focus``: variance of the Laplacian of the whole crop (channel mean, grey levels);
      lower when blurred;
    * ``centroid_offset``: distance in pixels from the mask's centroid to the crop's centre;
    * ``slant``: the mask's shear, columns moved per row (its second moments' covariance over the
      rows' variance), positive when the top leans right: a handwritten digit's slant;
    * ``stroke_width``: :func:`ink_mask`'s pixels inside the mask over the length of their
      skeleton, in pixels: the width of a drawn line (for a compact cell, its stained part's
      size relative to its extent).

    A crop with an empty mask gets area 0, eccentricity 0, orientation 0, offset 0 and the
    crop's mean as intensity, so that every value is finite.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    names = list(channel_names) if channel_names is not None else [f"ch{i}" for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} channel names for {c} channels")
    if masks is not None and masks.shape != images.shape[:3]:
        raise ValueError(f"masks must be {images.shape[:3]}, got {masks.shape}")
    parts = []
    for i in range(0, max(n, 1), chunk):
        part = images[i : i + chunk]
        part_masks = foreground_mask(part) if masks is None else masks[i : i + chunk]
        frame = _measure(part, part_masks, names)
        frame["stroke_width"] = stroke_width(ink_mask(part) & part_masks)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def stroke_width(ink: np.ndarray) -> np.ndarray:
    """Pixels of each (H, W) mask of ``ink`` (N, H, W) bool over the pixels of its skeleton (the
    mean width of a line drawn with it), (N,) float64; 0 for an empty mask."""
    out = np.zeros(len(ink))
    for i, m in enumerate(ink):
        area = m.sum()
        if area:
            out[i] = area / max(int(skeletonize(m).sum()), 1)
    return out


def _measure(images: np.ndarray, masks: np.ndarray, names: list[str]) -> pd.DataFrame:
    n, h, w, c = images.shape
    m = masks.astype(np.float64)
    x = images.astype(np.float64)

    area = m.sum(axis=(1, 2))
    safe = np.maximum(area, 1.0)
    rows = np.arange(h, dtype=np.float64)[None, :, None]
    cols = np.arange(w, dtype=np.float64)[None, None, :]
    r0 = (m * rows).sum(axis=(1, 2)) / safe
    c0 = (m * cols).sum(axis=(1, 2)) / safe
    dr = rows - r0[:, None, None]
    dc = cols - c0[:, None, None]
    s_rr = (m * dr**2).sum(axis=(1, 2)) / safe
    s_cc = (m * dc**2).sum(axis=(1, 2)) / safe
    s_rc = (m * dr * dc).sum(axis=(1, 2)) / safe
    half_diff = np.sqrt(((s_rr - s_cc) / 2) ** 2 + s_rc**2)
    l_major = (s_rr + s_cc) / 2 + half_diff
    l_minor = (s_rr + s_cc) / 2 - half_diff
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.sqrt(np.clip(1 - l_minor / l_major, 0, 1))
    ecc = np.where(l_major > 0, ecc, 0.0)
    # skimage's convention: angle from the row axis to the major axis
    orientation = np.where(area > 0, 0.5 * np.arctan2(2 * s_rc, s_rr - s_cc), 0.0)

    whole_mean = x.mean(axis=(1, 2))  # (N, C)
    in_mask = (x * m[..., None]).sum(axis=(1, 2)) / safe[:, None]
    per_channel = np.where(area[:, None] > 0, in_mask, whole_mean)

    centre_r, centre_c = (h - 1) / 2, (w - 1) / 2
    offset = np.where(area > 0, np.hypot(r0 - centre_r, c0 - centre_c), 0.0)

    out = {
        "area": area,
        "eccentricity": ecc,
        "orientation": orientation,
        "orientation_cos2": ecc * np.cos(2 * orientation),
        "orientation_sin2": ecc * np.sin(2 * orientation),
        "intensity": per_channel.mean(axis=1),
    }
    for i, name in enumerate(names):
        out[f"intensity_{name}"] = per_channel[:, i]
    out["focus"] = laplacian(x.mean(axis=3)).reshape(len(x), -1).var(axis=1)
    out["centroid_offset"] = offset
    out["slant"] = np.where(s_rr > 0, -s_rc / np.where(s_rr > 0, s_rr, 1.0), 0.0)
    return pd.DataFrame(out)


def intensity_features(
    images: np.ndarray,
    *,
    channel_names: Sequence[str] | None = None,
    masks: np.ndarray | None = None,
    erode: int = 2,
) -> pd.DataFrame:
    """One-number intensity summaries of the cell in each crop, per channel.

    Parameters
    ----------
    images : (N, H, W, C) uint8 ndarray
    channel_names : names of the C channels (default ``ch0``, ``ch1``...).
    masks : (N, H, W) bool ndarray, optional; found with :func:`foreground_mask` when not given.
    erode : the mask is eroded by this many pixels for the percentiles, so that the blurred rim
        between cell and background (darker than any inner structure once a crop is resized)
        does not decide them; a mask that erosion would empty is used whole.

    Returns
    -------
    DataFrame with N rows and, per channel ``<name>``, the columns ``total_<name>`` (the sum over
    the mask of the channel minus its background level, the median of the crop's border: a stain's
    content, such as DNA), ``dark_<name>`` and ``bright_<name>`` (the 1st and 99th percentile
    inside the eroded mask: a dark parasite or a bright spot). A crop with an empty mask gets
    0 for the total and its whole-crop percentiles.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    n, _, _, c = images.shape
    names = list(channel_names) if channel_names is not None else [f"ch{i}" for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} channel names for {c} channels")
    masks = foreground_mask(images) if masks is None else np.asarray(masks, dtype=bool)
    inner = (
        ndi.binary_erosion(masks, structure=np.ones((1, 3, 3), bool), iterations=erode) if erode else masks
    )
    inner = np.where(inner.any(axis=(1, 2))[:, None, None], inner, masks)
    x = images.astype(np.float64)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    background = np.median(border, axis=1)  # (N, C)
    total = ((x - background[:, None, None, :]) * masks[..., None]).sum(axis=(1, 2))
    low, high = np.empty((n, c)), np.empty((n, c))
    for i in range(n):
        values = x[i][inner[i]] if inner[i].any() else x[i].reshape(-1, c)
        low[i], high[i] = np.percentile(values, [1, 99], axis=0)
    out = {}
    for j, name in enumerate(names):
        out[f"total_{name}"], out[f"dark_{name}"], out[f"bright_{name}"] = total[:, j], low[:, j], high[:, j]
    return pd.DataFrame(out, index=pd.RangeIndex(n))
