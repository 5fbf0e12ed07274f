"""Quality control of single-cell crops: one measured value per crop and check.

Every function takes a stack of crops (N, H, W, C) uint8 (or what was measured on them) and
returns one value per crop, so the values go straight into the crop table's ``qc_*`` columns.
The checks, and the reason each writes into ``qc_reason`` when it fails:

``clipped``  the box runs past the image border; fails when less than :data:`MIN_INSIDE` of its
             area lies inside (boxes a few pixels over the edge are kept, flagged).
``size``     box area over the set's median area; fails beyond ``qc_size_ratio`` either way.
             Set-wide: per-image crop jobs defer it to ``merge_crops``.
``cells``    number of clearly separate cells in the box (an Otsu threshold of the crop, at
             most the image's, on the distance from the background colour, then connected
             components); with ``qc_cell_count`` a box fails unless it holds exactly one.
             Single-cell inputs (the image is the cell: dividing cells, doublets) fail only
             when empty.
``blur``     variance of the Laplacian of the grey crop; fails below ``qc_blur_min``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

#: Least fraction of a box's area inside the image for the crop to pass.
MIN_INSIDE = 0.5
#: A second component in the box counts as another cell when its area is at least this
#: fraction of the largest one's. Neighbours touching a smear box reach into its corners and
#: edges with much smaller pieces; a second whole cell is about as large as the first.
MIN_CELL_FRACTION = 0.5
#: A box whose largest foreground component covers less than this fraction of it holds no cell.
MIN_FOREGROUND = 0.02
#: Least threshold on the distance from the background colour (of 255): below it is noise.
MIN_LEVEL = 8

REASONS = ("clipped", "size", "cells", "blur")


def foreground(crops: np.ndarray, background: np.ndarray) -> np.ndarray:
    """How far each pixel is from the background colour: (N, H, W) uint8, max over channels.

    Works for dark cells on a bright background (brightfield, smears) and bright cells on a
    dark one (fluorescence, black-background crops) alike.
    """
    bg = np.asarray(background, np.uint8)
    out = None
    for k in range(crops.shape[3]):
        channel = crops[..., k]
        d = np.maximum(channel, bg[k]) - np.minimum(channel, bg[k])
        out = d if out is None else np.maximum(out, d, out=out)
    return out


def otsu_levels(distance: np.ndarray) -> np.ndarray:
    """Otsu's threshold of each crop's uint8 values (N, H, W), at least :data:`MIN_LEVEL`: (N,) int.

    Per crop, so a faint cell in a busy image (or a G1 cell among bright mitotic ones) is
    still found; the floor keeps sensor noise in an empty crop from counting as cells.
    """
    n = len(distance)
    flat = distance.reshape(n, -1).astype(np.int32) + 256 * np.arange(n, dtype=np.int32)[:, None]
    hist = np.bincount(flat.ravel(), minlength=256 * n).reshape(n, 256).astype(np.float64)
    best = otsu_index(hist, np.arange(256, dtype=np.float64))
    return np.maximum(best + 1, MIN_LEVEL)  # values >= level are foreground


def otsu_index(hist: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Otsu's split of each row of histograms ``hist`` (N, B) with bin centres ``centres`` ((B,) or
    (N, B)): the last bin of the lower class, (N,) int, maximising the between-class variance.

    Splits that leave a class empty never win; a row with no valid split gives 0.
    """
    w0 = np.cumsum(hist, axis=1)
    w1 = w0[:, -1:] - w0
    m0 = np.cumsum(hist * centres, axis=1)
    valid = (w0 > 0) & (w1 > 0)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=valid)
    mean1 = np.divide(m0[:, -1:] - m0, w1, out=np.zeros_like(m0), where=valid)
    between = np.where(valid, w0 * w1 * (mean0 - mean1) ** 2, -1.0)
    return np.argmax(between, axis=1)


def cell_masks(distance: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Foreground masks (N, H, W) bool: ``distance >= level`` of each crop, holes filled.

    Filling holes closes the central pallor of red blood cells, as bright as the background.
    """
    return fill_holes(distance >= np.asarray(levels, np.int16).reshape(-1, 1, 1))


def fill_holes(masks: np.ndarray) -> np.ndarray:
    """Masks (N, H, W) bool with their holes filled: background components (4-connected, each crop
    apart) that do not reach their crop's border. A new array; ``masks`` is not modified."""
    labels, n = ndi.label(~masks, structure=_IN_PLANE)  # the whole stack at once, crops kept apart
    reaches_border = np.zeros(n + 1, bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        reaches_border[edge] = True
    reaches_border[0] = True
    return masks | ~reaches_border[labels]


_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


def count_cells(masks: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Cells in each crop's box region: (N,) int64.

    ``regions`` (N, 4) int: the box in crop pixels (min_row, min_col, max_row, max_col).
    Counts the foreground components inside the box at least :data:`MIN_CELL_FRACTION` as
    large as the largest; 0 when the largest covers under :data:`MIN_FOREGROUND` of the box.
    Touching cells that merge into one component count once: the check finds clearly
    separate cells and empty boxes, not every doublet.
    """
    n = len(masks)
    h, w = masks.shape[1:3] if n else (0, 0)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    r0, c0, r1, c1 = (regions[:, k].reshape(-1, 1, 1) for k in range(4))
    inside = masks & (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    labels, n_labels = ndi.label(inside, structure=_IN_PLANE)  # the whole stack, crops apart
    areas = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
    # Labels are numbered in raster order, crop after crop: crop k holds those up to its maximum.
    last = np.maximum.accumulate(labels.reshape(n, -1).max(axis=1)) if n else np.zeros(0, np.int64)
    owner = np.searchsorted(last, np.arange(1, n_labels + 1))  # the crop each label lives in
    largest = np.zeros(n, np.int64)
    np.maximum.at(largest, owner, areas)
    n_cells = np.bincount(owner[areas >= MIN_CELL_FRACTION * largest[owner]], minlength=n)
    box_area = np.maximum(1, (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1]))
    n_cells[largest < MIN_FOREGROUND * box_area] = 0
    return n_cells


def main_component(masks: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Each crop's cell: the foreground component with most area inside its box, (N, H, W) bool."""
    out = np.zeros_like(masks)
    for k, (mask, (r0, c0, r1, c1)) in enumerate(zip(masks, regions, strict=True)):
        labels, n = ndi.label(mask)
        if n == 0:
            continue
        counts = np.bincount(labels[r0:r1, c0:c1].ravel(), minlength=n + 1)
        counts[0] = 0
        if counts.max() > 0:
            out[k] = labels == int(np.argmax(counts))
    return out


def laplacian_variance(crops: np.ndarray) -> np.ndarray:
    """Sharpness: variance of the 4-neighbour Laplacian of the grey crop (channel mean), (N,) float64."""
    grey = crops[..., 0].astype(np.int16)
    for k in range(1, crops.shape[3]):
        grey += crops[..., k]
    lap = laplacian(grey).reshape(len(crops), -1).astype(np.int32)
    count = max(1, lap.shape[1])
    mean = lap.sum(axis=1, dtype=np.int64) / count
    var = np.einsum("ij,ij->i", lap, lap, dtype=np.int64) / count - mean**2
    return np.maximum(var, 0) / crops.shape[3] ** 2


def laplacian(grey: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of each (H, W) image of ``grey`` (N, H, W): (N, H - 2, W - 2), in
    ``grey``'s dtype (integers: make sure it cannot overflow)."""
    return (
        grey[:, :-2, 1:-1]
        + grey[:, 2:, 1:-1]
        + grey[:, 1:-1, :-2]
        + grey[:, 1:-1, 2:]
        - 4 * grey[:, 1:-1, 1:-1]
    )


def size_ratio(areas: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Each box's area over the median of ``reference`` (default: of ``areas``)."""
    areas = np.asarray(areas, dtype=np.float64)
    ref = areas if reference is None else np.asarray(reference, dtype=np.float64)
    median = float(np.median(ref)) if ref.size else 1.0
    return areas / max(median, 1e-9)


def join_reasons(failed: dict[str, np.ndarray], n: int) -> np.ndarray:
    """``qc_reason`` strings (n,) object: the failed checks in :data:`REASONS` order, joined by ';'."""
    parts = [np.where(failed[r], r, "") for r in REASONS if r in failed]
    out = np.full(n, "", dtype=object)
    for k in np.flatnonzero(np.any([p != "" for p in parts], axis=0)) if parts and n else []:
        out[k] = ";".join(p[k] for p in parts if p[k])
    return out


def split_reasons(reasons: pd.Series) -> list[set[str]]:
    """The failed checks of each ``qc_reason`` string, as sets."""
    return [set(r.split(";")) - {""} for r in reasons.astype(str)]
