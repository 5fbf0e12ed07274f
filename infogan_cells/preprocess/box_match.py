"""How well found boxes match true ones: intersection over union, and a one-to-one matching.

For evaluating :func:`~infogan_cells.preprocess.segment.segment_cells` (tests, benchmarks); the
pipeline itself does not call it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from infogan_cells.data.cells import BOX_COLUMNS


def box_iou(boxes_a, boxes_b):
    """Intersection over union of every pair of boxes.

    Parameters
    ----------
    boxes_a : (P, 4) array_like
        Boxes as (min_row, min_col, max_row, max_col), max exclusive. A DataFrame is read
        through those four columns.
    boxes_b : (T, 4) array_like
        Boxes in the same form.

    Returns
    -------
    iou : (P, T) ndarray of float64
        Values in [0, 1]; 0 where both boxes have zero area.
    """
    a = _as_boxes(boxes_a)[:, None, :]
    b = _as_boxes(boxes_b)[None, :, :]
    rows = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    cols = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = rows * cols
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(pred, true, *, iou=0.5):
    """Match found boxes to true boxes one-to-one and count the outcome.

    Pairs are chosen by the Hungarian algorithm to maximise the summed IoU over pairs of
    IoU >= ``iou``; only those pairs count.

    Parameters
    ----------
    pred : (P, 4) array_like
        Found boxes as (min_row, min_col, max_row, max_col); see :func:`box_iou`.
    true : (T, 4) array_like
        True boxes in the same form.
    iou : float, optional
        Least IoU of a match, in (0, 1].

    Returns
    -------
    tp, fp, fn : int
        Matched pairs, found boxes left unmatched, true boxes left unmatched.

    Raises
    ------
    ValueError
        If ``iou`` is outside (0, 1] or a box array is not (K, 4).
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    overlap = box_iou(pred, true)
    n_pred, n_true = overlap.shape
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    rows, cols = linear_sum_assignment(np.where(overlap >= iou, overlap, 0.0), maximize=True)
    tp = int(np.count_nonzero(overlap[rows, cols] >= iou))
    return tp, n_pred - tp, n_true - tp


def _as_boxes(boxes):
    if isinstance(boxes, pd.DataFrame):
        boxes = boxes.loc[:, list(BOX_COLUMNS)]
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {boxes.shape}")
    return boxes


# -- signal, size, mask ---------------------------------------------------------------
