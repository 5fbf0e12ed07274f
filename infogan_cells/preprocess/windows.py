"""Square crop windows around boxes, cut, resized, aligned and masked: arrays in, new arrays out."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from infogan_cells.preprocess import qc
from infogan_cells.preprocess.normalise import planes

log = logging.getLogger(__name__)


def box_problems(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Why each box (K, 4) cannot be cropped from an image of ``shape`` (M, N): '' if it can.

    ``bad_box`` (min > max, or not a number), ``empty_box`` (zero height or width),
    ``outside_image`` (no pixel inside the image).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    out = np.full(len(boxes), "", dtype=object)
    outside = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= shape[0]) | (boxes[:, 1] >= shape[1])
    out[outside] = "outside_image"
    out[(h == 0) | (w == 0)] = "empty_box"
    out[~np.isfinite(boxes).all(axis=1) | (h < 0) | (w < 0)] = "bad_box"
    return out


def crop_windows(
    boxes: np.ndarray, *, margin: float = 0.15, whole: bool = False, window: int | None = None
) -> np.ndarray:
    """Square windows (K, 3) int64 (min_row, min_col, side) centred on boxes (K, 4).

    The side is ``max(h, w) * (1 + 2 * margin)``, or ``max(h, w)`` with ``whole`` (the box is
    the whole single-cell image, which already holds its context), or ``window`` for every box
    when given (a fixed window: every crop has the same scale).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if window is not None:
        side = np.full(len(boxes), float(window))
    else:
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (
            1 if whole else 1 + 2 * margin
        )
    side = np.maximum(1, np.round(side)).astype(np.int64)
    r0 = np.round((boxes[:, 0] + boxes[:, 2] - side) / 2).astype(np.int64)
    c0 = np.round((boxes[:, 1] + boxes[:, 3] - side) / 2).astype(np.int64)
    return np.stack([r0, c0, side], axis=1)


def crop_cells(
    image,
    boxes: np.ndarray,
    *,
    size: int = 64,
    margin: float = 0.15,
    background: Sequence[int] | None = None,
    whole: bool = False,
    window: int | None = None,
) -> np.ndarray:
    """Cut one square crop per box, centred on it, resized to ``size``.

    Parameters
    ----------
    image : (M, N, C) uint8 ndarray, or a PIL image (mode L or RGB)
        The normalised image.
    boxes : (K, 4) array_like
        (min_row, min_col, max_row, max_col), max exclusive; each must overlap the image.
    size : int
        Output side in pixels.
    margin : float
        Context around the box, as a fraction of its longer side, on each side.
    background : sequence of C ints, optional
        Fill for the parts of a window outside the image (default 0).
    whole : bool
        The boxes are whole single-cell images: no margin (see :func:`crop_windows`).
    window : int, optional
        A fixed window side in source pixels for every box, instead of one scaled to the box.

    Returns
    -------
    crops : (K, size, size, C) uint8 ndarray
        Downsizing averages over each output pixel's area (anti-aliased); enlarging is bilinear.
    """
    fill = None if background is None else np.asarray(background)
    return crop_planes(planes(image), boxes, size=size, margin=margin, fill=fill, whole=whole, window=window)


def crop_planes(
    planes: list[Image.Image],
    boxes: np.ndarray,
    *,
    size: int,
    margin: float,
    fill: np.ndarray | None,
    whole: bool,
    lut: np.ndarray | None = None,
    window: int | None = None,
) -> np.ndarray:
    """:func:`crop_cells` on PIL images holding the channels; ``lut`` (256, C) maps the result.

    Each crop is pasted into one tall PIL image per plane, converted to an array once: a
    hundred small conversions cost more than the resizing.
    """
    n_channels = sum(len(p.getbands()) for p in planes)
    height, width = planes[0].height, planes[0].width
    fill = [int(v) for v in (fill if fill is not None else [0] * n_channels)]
    windows = crop_windows(boxes, margin=margin, whole=whole, window=window)
    n = len(windows)
    out = np.empty((n, size, size, n_channels), np.uint8)
    if n == 0:
        return out
    first = 0
    for plane in planes:
        bands = len(plane.getbands())
        value = tuple(fill[first : first + bands]) if bands > 1 else fill[first]
        atlas = Image.new(plane.mode, (size, size * n))
        for k, (r0, c0, side) in enumerate(windows.tolist()):
            resample = Image.Resampling.BOX if side >= size else Image.Resampling.BILINEAR
            if r0 >= 0 and c0 >= 0 and r0 + side <= height and c0 + side <= width:
                small = plane.resize((size, size), resample, box=(c0, r0, c0 + side, r0 + side))
            else:  # the window runs past the image: paste what is inside onto the background
                canvas = Image.new(plane.mode, (side, side), value)
                inside = plane.crop((max(c0, 0), max(r0, 0), min(c0 + side, width), min(r0 + side, height)))
                canvas.paste(inside, (max(c0, 0) - c0, max(r0, 0) - r0))
                small = canvas.resize((size, size), resample)
            atlas.paste(small, (0, k * size))
        if lut is not None:
            atlas = atlas.point(lut[:, first : first + bands].T.ravel().tolist())
        out[..., first : first + bands] = np.asarray(atlas).reshape(n, size, size, bands)
        first += bands
    return out


def box_regions(boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """Where each box lies in its crop: (K, 4) int (min_row, min_col, max_row, max_col), clipped."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = size / windows[:, 2:3]
    corner = np.concatenate([windows[:, :2], windows[:, :2]], axis=1)
    region = np.round((boxes - corner) * scale)
    return np.clip(region, 0, size).astype(np.int64)


def align_cells(
    crops: np.ndarray, masks: np.ndarray, background: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each crop so its cell's major axis is horizontal: (crops, angles in degrees).

    ``masks`` (N, H, W) bool: each crop's cell. The angle comes from ``regionprops``
    orientation (the angle between the row axis and the major axis); crops with an empty
    mask are left as they are. Corners brought in from outside take ``background``.
    """
    from skimage.measure import regionprops

    out = crops.copy()
    angles = np.zeros(len(crops))
    planes_fill = [int(v) for v in background]
    for k, mask in enumerate(masks):
        if not mask.any():
            continue
        (props,) = regionprops(mask.astype(np.uint8))
        angle = 90.0 - np.degrees(props.orientation) % 180.0  # the smaller turn, in (-90, 90]
        angles[k] = angle
        first = 0
        for plane in planes(crops[k]):
            bands = len(plane.getbands())
            value = tuple(planes_fill[first : first + bands]) if bands > 1 else planes_fill[first]
            rotated = np.asarray(plane.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=value))
            out[k, :, :, first : first + bands] = rotated if rotated.ndim == 3 else rotated[..., None]
            first += bands
    return out, angles


def inside_fraction(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h = np.clip(np.minimum(boxes[:, 2], shape[0]) - np.maximum(boxes[:, 0], 0), 0, None)
    w = np.clip(np.minimum(boxes[:, 3], shape[1]) - np.maximum(boxes[:, 1], 0), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.divide(h * w, area, out=np.ones(len(boxes)), where=area > 0)


#: pixels the cell's mask is eroded by before a median fill: the anti-aliased rim between a cell
#: and its surround is darker than the cell and would stay behind as a dark ring
MEDIAN_FILL_ERODE = 2


def mask_background(crops: np.ndarray, background: np.ndarray, fill: str = "background") -> np.ndarray:
    """Pixels outside each crop's cell (the central foreground component) set to ``fill``:
    ``background`` the image's background level (mask dilated by 1 px), ``median`` the cell's own
    median colour (mask eroded by :data:`MEDIAN_FILL_ERODE` px). A crop whose mask is empty or
    erodes away is left as it was."""
    from scipy import ndimage as ndi

    size = crops.shape[1]
    centre = np.tile(np.array([[size // 4, size // 4, size - size // 4, size - size // 4]]), (len(crops), 1))
    distance = qc.foreground(crops, background)
    masks = qc.main_component(qc.cell_masks(distance, qc.otsu_levels(distance)), centre)
    if fill == "background":
        masks = np.stack([ndi.binary_dilation(m) for m in masks])
        return np.where(masks[..., None], crops, np.asarray(background, np.uint8)).astype(np.uint8)
    out = crops.copy()
    for k, m in enumerate(masks):
        inner = ndi.binary_erosion(m, iterations=MEDIAN_FILL_ERODE)
        if inner.any():
            out[k][~inner] = np.median(crops[k][inner], axis=0).astype(np.uint8)
    return out
