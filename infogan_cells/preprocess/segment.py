"""Find cells in whole images that come without boxes.

Thin blood smears (Giemsa) and similar brightfield images show cells darker than a bright
background. :func:`label_cells` turns such an image into a label image:

1. *signal*: one channel (green for RGB, where Giemsa-stained cells absorb most), scaled by
   its own robust range, inverted so that cells are high, minus a smooth background (a low
   percentile over windows a quarter of the image wide, which follows uneven illumination);
2. *typical cell size*, unless given: the median area of the compact, solid components of
   an Otsu mask. Every later length is a multiple of it, so the same settings serve images
   at any magnification;
3. *mask*: Otsu threshold, specks opened away, holes smaller than half a cell filled (the
   central pallor of red blood cells is as bright as the background);
4. *split*, per connected component, by whichever of two marker sets yields more
   cell-like regions (about one cell's area, convex):

   - maxima of the distance transform (``peak_local_max``, ``min_distance`` a fraction of
     the cell radius): cells that touch with a neck;
   - the cores left when the bright rims are removed: overlapping cells in crowded smears,
     which show no neck but each show their own rim;

   then touching pieces that together make one convex cell-sized region are merged back,
   and regions of two to six cells that no marker split are cut into compact parts of
   about one cell each (k-means on the pixel positions) when that yields cell-like parts;
5. each region is closed and its holes filled (a pallor open to the background through a
   gap in the rim leaves a C); regions are kept by area, solidity and border contact.

:func:`segment_cells` returns one row per cell with its bounding box and shape measures.
:mod:`infogan_cells.preprocess.box_match` compares found boxes with true ones.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation, transform

logger = logging.getLogger(__name__)


# Lengths in units of the typical cell radius, areas in units of the typical cell area.
# Tuned on ../shared/data (bbbc041, iml_malaria): see benchmarks/segment_accuracy.py.
_PEAK_MIN_DISTANCE = 0.4  # between distance-transform markers
_PEAK_MIN_HEIGHT = 0.33  # a marker lies at least this deep inside the mask
_RIM_SIGMA = 0.3  # a rim is brighter than the signal blurred at this scale
_CORE_MIN_AREA = 0.08  # smaller cores are not markers
_MERGE_MAX_AREA = 1.3  # two pieces are merged back when their union is at most this...
_MERGE_MIN_SOLIDITY = 0.9  # ...and at least this convex
_CLUMP_AREA = (1.8, 6.0)  # regions in this range are candidates for a compact cut
_CLOSE_RADIUS = 0.25  # closing of each region before its holes are filled
_CELL_LIKE_AREA = (0.4, 1.6)  # what "cell-like" means when choosing between splits...
_CELL_LIKE_SOLIDITY = 0.85  # ...of a component or a clump

_PROPERTIES = ("label", "bbox", "area", "solidity", "eccentricity", "centroid", "equivalent_diameter_area")
_RENAME = {
    "bbox-0": "min_row",
    "bbox-1": "min_col",
    "bbox-2": "max_row",
    "bbox-3": "max_col",
    "centroid-0": "centroid_row",
    "centroid-1": "centroid_col",
    "equivalent_diameter_area": "diameter",
}


def label_cells(
    image,
    *,
    channel=None,
    dark_cells=True,
    cell_diameter=None,
    min_area=None,
    max_area=None,
    min_solidity=0.8,
    exclude_border=False,
    min_border_area=None,
):
    """Label the cells of a whole image.

    Parameters
    ----------
    image : (M, N) or (M, N, C) ndarray
        Grey or multichannel image of any real dtype (uint8, uint16, float...). Its range
        does not matter: each image is scaled by its own 0.5th and 99.5th percentiles.
        Not modified.
    channel : int, optional
        Channel of a multichannel image to segment. Default: 1 (green) when C >= 3, else 0.
    dark_cells : bool, optional
        True (default) when cells are darker than the background (brightfield, smears);
        False for bright cells on a dark background (fluorescence).
    cell_diameter : float, optional
        Typical cell diameter in pixels. Estimated from the image when None.
    min_area, max_area : float, optional
        Cells with fewer or more pixels are dropped. Default: 0.4 and 3 times the area of
        a disk of the typical cell diameter.
    min_solidity : float, optional
        Cells whose area over convex-hull area is below this are dropped (unsplit clumps,
        debris). 0 keeps all.
    exclude_border : bool, optional
        Drop every cell that touches the image edge.
    min_border_area : float, optional
        Cells that touch the image edge need at least this many pixels; smaller ones are
        cells cut by the edge. Default: 0.7 times the typical cell area.

    Returns
    -------
    label_image : (M, N) ndarray of int32
        0 for background, 1..K for the cells kept, in raster order of their first pixel.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or 3-D or has no pixels, ``channel`` is out of range, or
        ``cell_diameter`` is not positive.
    """
    signal = _signal(image, channel=channel, dark_cells=dark_cells)
    if cell_diameter is None:
        cell_diameter = _estimate_diameter(signal)
        logger.debug("estimated cell diameter: %.1f px", cell_diameter)
    elif not cell_diameter > 0:
        raise ValueError(f"cell_diameter must be > 0, got {cell_diameter}")
    radius = cell_diameter / 2
    cell_area = np.pi * radius**2

    dark = _threshold(signal, speck_radius=max(1, round(radius / 12)))
    mask = _fill_small_holes(dark, max_area=cell_area / 2)
    labels = _split(signal, dark, mask, radius=radius)
    labels = _merge_fragments(labels, cell_area)
    labels = _split_clumps(labels, cell_area)
    labels = _fill_regions(labels, max(1, round(_CLOSE_RADIUS * radius)))

    if exclude_border:
        labels = segmentation.clear_border(labels)
    props = measure.regionprops_table(labels, properties=("label", "area", "solidity", "bbox"))
    area = props["area"]
    keep = (area >= (0.4 * cell_area if min_area is None else min_area)) & (props["solidity"] >= min_solidity)
    keep &= area <= (3.0 * cell_area if max_area is None else max_area)
    edge = (props["bbox-0"] == 0) | (props["bbox-1"] == 0)
    edge |= (props["bbox-2"] == labels.shape[0]) | (props["bbox-3"] == labels.shape[1])
    keep &= ~edge | (area >= (0.7 * cell_area if min_border_area is None else min_border_area))
    logger.debug("%d of %d regions kept", np.count_nonzero(keep), keep.size)
    kept = np.zeros(labels.max() + 1, dtype=bool)
    kept[props["label"][keep]] = True
    labels = np.where(kept[labels], labels, 0)
    values, first = np.unique(labels, return_index=True)
    order = values[values > 0][np.argsort(first[values > 0])]
    lut = np.zeros(labels.max() + 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def segment_cells(image, **options):
    """Find the cells of a whole image and measure them.

    Parameters
    ----------
    image : (M, N) or (M, N, C) ndarray
        Grey or multichannel image of any real dtype. Not modified.
    **options
        Keyword arguments of :func:`label_cells` (``channel``, ``dark_cells``, ``cell_diameter``,
        ``min_area``, ``max_area``, ``min_solidity``, ``exclude_border``, ``min_border_area``).

    Returns
    -------
    cells : pandas.DataFrame
        One row per cell, in label order, with columns ``label`` (int32, as in
        :func:`label_cells`), ``min_row``, ``min_col``, ``max_row``, ``max_col`` (the
        bounding box in pixels, max exclusive, as ``regionprops`` gives it), ``area``
        (pixels), ``solidity``, ``eccentricity``, ``centroid_row``, ``centroid_col`` and
        ``diameter`` (of the disk of equal area, pixels). Empty, with these columns, when
        no cell is found.
    """
    labels = label_cells(image, **options)
    return pd.DataFrame(measure.regionprops_table(labels, properties=_PROPERTIES)).rename(columns=_RENAME)


def _signal(image, *, channel=None, dark_cells=True):
    """Background-corrected float64 (M, N) signal, about 0 on background, high on cells."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be (M, N) or (M, N, C) with pixels, got shape {image.shape}")
    if image.ndim == 3:
        n_channels = image.shape[2]
        if channel is None:
            channel = 1 if n_channels >= 3 else 0
        if not -n_channels <= channel < n_channels:
            raise ValueError(f"channel {channel} out of range for an image with {n_channels} channels")
        image = image[..., channel]
    signal = image.astype(np.float64)  # a new array: the input is never written to
    low, high = np.percentile(signal, (0.5, 99.5))
    if high <= low:
        return np.zeros_like(signal)
    signal = np.clip((signal - low) / (high - low), 0, 1)
    if dark_cells:
        signal = 1 - signal
    return signal - _background(signal)


def _background(signal):
    """Smooth background level: a low percentile over windows a quarter of the image wide.

    The percentile ignores cells as long as some background shows in each window, which
    holds in smears far more crowded than a grey opening of the same width tolerates, and
    it needs no cell size. Computed on a copy down-sampled to about 128 px on its shorter
    side.
    """
    factor = max(1.0, min(signal.shape) / 128)
    small = transform.rescale(signal, 1 / factor, anti_aliasing=factor > 1)
    size = max(3, min(small.shape) // 4)
    background = ndi.percentile_filter(small, 10, size=size, mode="reflect")
    background = filters.gaussian(background, sigma=size / 2, mode="reflect")
    return transform.resize(background, signal.shape)


def _threshold(signal, *, speck_radius=1):
    """Otsu mask of the lightly smoothed signal, specks opened away."""
    smooth = filters.gaussian(signal, sigma=1)
    if np.ptp(smooth) == 0:
        return np.zeros(signal.shape, dtype=bool)
    dark = smooth > filters.threshold_otsu(smooth)
    return ndi.binary_opening(dark, structure=morphology.disk(speck_radius))


def _fill_small_holes(mask, *, max_area):
    """Fill holes of fewer than ``max_area`` px: the pallor of one cell, not the gap in a ring of cells."""
    holes, _ = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    small = np.bincount(holes.ravel()) < max_area
    small[0] = False
    return mask | small[holes]


def _estimate_diameter(signal):
    """Typical cell diameter in px: median over compact, solid components of an Otsu mask."""
    mask = ndi.binary_fill_holes(_threshold(signal))
    labels = measure.label(mask)
    props = measure.regionprops_table(labels, properties=("area", "solidity", "eccentricity"))
    area = props["area"]
    clean = np.sort(area[(area >= 25) & (props["solidity"] >= 0.9) & (props["eccentricity"] <= 0.8)])
    if len(clean) >= 5:
        # Crowded smears have few isolated cells and many specks: ignore components under
        # 0.3 of the area-weighted median before taking the median.
        cumulative = np.cumsum(clean)
        weighted_median = clean[np.searchsorted(cumulative, cumulative[-1] / 2)]
        return float(2 * np.sqrt(np.median(clean[clean >= 0.3 * weighted_median]) / np.pi))
    if mask.any():
        # Few isolated cells: in clumps of cells of radius R the distance maxima are ~R.
        distance = ndi.distance_transform_edt(mask)
        peaks = feature.peak_local_max(distance, min_distance=3, labels=labels)
        if len(peaks):
            return float(2 * np.median(distance[tuple(peaks.T)]))
    return float(max(4, min(mask.shape) / 10))


# -- splitting ----------------------------------------------------------------------


def _split(signal, dark, mask, *, radius):
    """Watershed of ``mask``, per component from distance maxima or from rim-free cores."""
    components, n_components = ndi.label(mask)
    cell_area = np.pi * radius**2

    distance = filters.gaussian(ndi.distance_transform_edt(mask), sigma=max(1, radius / 20))
    peaks = feature.peak_local_max(
        distance,
        min_distance=max(1, round(_PEAK_MIN_DISTANCE * radius)),
        threshold_abs=_PEAK_MIN_HEIGHT * radius,
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    by_distance = segmentation.watershed(-distance, markers, mask=mask)

    # Only above-threshold pixels make cores: a filled gap between packed cells is not rim
    # either, but it is no cell.
    fine = filters.gaussian(signal, sigma=max(1, radius / 15))
    rim = fine > filters.gaussian(signal, sigma=_RIM_SIGMA * radius)
    core = ndi.binary_opening(dark & ~rim, structure=morphology.disk(max(1, round(radius / 10))))
    cores, _ = ndi.label(_drop_small(core, _CORE_MIN_AREA * cell_area))
    by_rim = segmentation.watershed(ndi.distance_transform_edt(~core), cores, mask=mask)

    use_rim = _cell_like_area(by_rim, components, n_components, cell_area) > _cell_like_area(
        by_distance, components, n_components, cell_area
    )
    use_rim = np.concatenate([[False], use_rim])
    logger.debug("rim cores split %d of %d components", np.count_nonzero(use_rim), n_components)
    labels = np.where(use_rim[components], by_rim + by_distance.max(), by_distance)
    labels[~mask] = 0
    return segmentation.relabel_sequential(labels)[0]


def _drop_small(mask, min_area):
    labels, _ = ndi.label(mask)
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def _is_cell_like(area, solidity, cell_area):
    low, high = _CELL_LIKE_AREA
    return (area >= low * cell_area) & (area <= high * cell_area) & (solidity >= _CELL_LIKE_SOLIDITY)


def _cell_like_area(labels, components, n_components, cell_area):
    """Per component 1..n, the summed area of its cell-like regions in ``labels``."""
    props = measure.regionprops_table(labels, properties=("area", "solidity", "coords"))
    score = np.zeros(n_components)
    good = _is_cell_like(props["area"], props["solidity"], cell_area)
    for area, coords in zip(props["area"][good], props["coords"][good], strict=True):
        score[components[tuple(coords[0])] - 1] += area
    return score


def _adjacent_pairs(labels):
    """Unique pairs (a, b), a < b, of labels that touch along a row or a column."""
    pairs = []
    for a, b in ((labels[:-1, :], labels[1:, :]), (labels[:, :-1], labels[:, 1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def _merge_fragments(labels, cell_area):
    """Merge touching regions whose union looks like one cell, the most convex union first.

    Marker-based splitting errs towards too many pieces (a cell with a pale centre and a
    dark rim can give two cores, an elongated cell two distance maxima).
    """
    labels = labels.copy()
    while True:
        area = np.bincount(labels.ravel())
        slices = ndi.find_objects(labels)
        candidates = []
        for a, b in _adjacent_pairs(labels):
            if area[a] + area[b] > _MERGE_MAX_AREA * cell_area:
                continue
            box = tuple(
                slice(min(sa.start, sb.start), max(sa.stop, sb.stop))
                for sa, sb in zip(slices[a - 1], slices[b - 1], strict=True)
            )
            union = np.isin(labels[box], (a, b))
            solidity = np.count_nonzero(union) / np.count_nonzero(morphology.convex_hull_image(union))
            if solidity >= _MERGE_MIN_SOLIDITY:
                candidates.append((solidity, a, b))
        if not candidates:
            return labels
        merged = set()
        for _, a, b in sorted(candidates, reverse=True):
            if a not in merged and b not in merged:
                labels[labels == b] = a
                merged.update((a, b))


def _split_clumps(labels, cell_area):
    """Cut regions of two to six cells into k compact parts when the parts are cell-like.

    k is the region's area over the typical cell area. Heavily overlapping cells that show
    neither a neck nor their own rim end up here.
    """
    out = labels.copy()
    next_label = labels.max() + 1
    low, high = _CLUMP_AREA
    for index, region in enumerate(ndi.find_objects(labels), start=1):
        if region is None:
            continue
        own = labels[region] == index
        area = np.count_nonzero(own)
        if not low * cell_area <= area <= high * cell_area:
            continue
        k = max(2, round(area / cell_area))
        parts = _kmeans_partition(own, k)
        props = measure.regionprops_table(parts, properties=("area", "solidity"))
        whole = measure.regionprops_table(own.astype(np.uint8), properties=("area", "solidity"))
        gain = props["area"][_is_cell_like(props["area"], props["solidity"], cell_area)].sum()
        if gain > whole["area"][_is_cell_like(whole["area"], whole["solidity"], cell_area)].sum():
            view = out[region]
            view[own] = np.where(parts[own] == 1, index, parts[own] - 2 + next_label)
            next_label += k - 1
    return out


def _kmeans_partition(inside, k):
    """Label the pixels of ``inside`` 1..k by Lloyd's k-means on (row, col).

    Deterministic: starts from the deepest pixel and adds the farthest ones.
    """
    coords = np.argwhere(inside).astype(np.float64)
    sample = coords[:: max(1, len(coords) // 4000)]
    distance = ndi.distance_transform_edt(inside)
    centres = coords[[np.argmax(distance[inside])]]
    while len(centres) < k:
        gap = ((sample[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
        centres = np.vstack([centres, sample[np.argmax(gap)]])
    for _ in range(30):
        nearest = ((sample[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        moved = centres.copy()
        for j in np.unique(nearest):
            moved[j] = sample[nearest == j].mean(0)
        converged = np.allclose(moved, centres, atol=0.25)
        centres = moved
        if converged:
            break
    parts = np.zeros(inside.shape, dtype=np.int32)
    parts[inside] = ((coords[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1) + 1
    return parts


def _fill_regions(labels, close_radius):
    """Close each region and fill its holes, taking only background pixels.

    A pale cell whose pallor opens to the background through a gap in its rim comes out
    of the threshold as a C; this restores the disk.
    """
    out = labels.copy()
    footprint = morphology.disk(close_radius)
    pad = close_radius + 1
    for index, region in enumerate(ndi.find_objects(labels), start=1):
        if region is None:
            continue
        box = tuple(slice(max(0, s.start - pad), s.stop + pad) for s in region)
        own = np.pad(labels[box] == index, pad)
        filled = ndi.binary_fill_holes(ndi.binary_closing(own, structure=footprint))[pad:-pad, pad:-pad]
        view = out[box]
        view[filled & (view == 0)] = index
    return out
