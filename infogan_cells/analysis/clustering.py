"""Agreement between a clustering (InfoGAN categories, k-means) and known classes.

The numbers the InfoGAN and clustering papers report: accuracy after the best one-to-one
matching of clusters to classes (Hungarian, ``scipy.optimize.linear_sum_assignment``),
normalised mutual information and the adjusted Rand index (``sklearn.metrics``). With more
clusters than classes (over-clustering) the one-to-one accuracy caps below 1, so
:func:`many_to_one_accuracy` (each cluster takes its majority class) is reported beside it.

Labels may be any hashable values (strings, ints); nothing here needs torch. Q's categories
for real crops come from :func:`infogan_cells.analysis.codes.assign_with_q`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = [
    "contingency",
    "hungarian_mapping",
    "hungarian_accuracy",
    "many_to_one_accuracy",
    "agreement",
]


def contingency(y_true: Sequence, y_pred: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (n_clusters, n_classes) of each (cluster, class) pair, with the cluster and class values."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-d and of equal length, got {y_true.shape}, {y_pred.shape}"
        )
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((len(clusters), len(classes)), np.int64)
    np.add.at(counts, (p, t), 1)
    return counts, clusters, classes


def hungarian_mapping(y_true: Sequence, y_pred: Sequence) -> dict:
    """The one-to-one cluster -> class matching that maximises the matched count.

    Clusters left unmatched (more clusters than classes) are absent from the dict.
    """
    counts, clusters, classes = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {clusters[r].item(): classes[c].item() for r, c in zip(rows, cols, strict=True)}


def hungarian_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of samples whose cluster is matched to their class by :func:`hungarian_mapping`."""
    counts, _, _ = contingency(y_true, y_pred)
    if counts.size == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def many_to_one_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of samples in their cluster's majority class (purity; over-clustering friendly)."""
    counts, _, _ = contingency(y_true, y_pred)
    if counts.size == 0:
        return float("nan")
    return float(counts.max(axis=1).sum() / counts.sum())


def agreement(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """``acc`` (Hungarian), ``nmi``, ``ari`` and ``purity`` (many-to-one) of a clustering."""
    return {
        "acc": hungarian_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
        "purity": many_to_one_accuracy(y_true, y_pred),
    }
