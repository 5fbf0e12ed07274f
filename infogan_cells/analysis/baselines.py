"""The one-number baseline: the best single measured feature, clustered into as many groups as the
InfoGAN has categories.

Simple features often carry the kinds of cells on their own (a colour percentile for parasitised
red blood cells, the summed DNA stain for the cell cycle). :func:`best_single_feature` clusters
each morphology and intensity feature alone (k-means in one dimension, on the values and, for
features that are never negative, on their logarithm) and keeps the one whose clusters agree best
with the labels (NMI). The choice uses the labels, so the figure is an optimistic bound for a
one-number rule: categories that do not beat it add little.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from infogan_cells.analysis.metrics import label_scores

log = logging.getLogger(__name__)

MEASURES = ("accuracy", "nmi", "ari", "purity")
#: The measure that picks the feature (it does not grow with the number of clusters as purity does).
CHOSEN_BY = "nmi"


def cluster_1d(values: np.ndarray, k: int) -> np.ndarray | None:
    """k-means clusters (N,) of one feature's values; ``None`` when it has fewer than ``k``
    distinct finite values (nothing to split)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all() or len(np.unique(values)) < k:
        return None
    x = (values - values.mean()) / (values.std() or 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # ties: fewer distinct clusters than k
        return KMeans(k, n_init=3, random_state=0).fit_predict(x[:, None])


def best_single_feature(features: pd.DataFrame, labels: np.ndarray, k: int) -> dict:
    """The feature of ``features`` (one row per crop) whose k clusters agree best with ``labels``.

    Returns the label measures of :func:`~infogan_cells.analysis.metrics.label_scores` for the chosen
    feature, plus ``feature`` (its column, ``log <column>`` when its logarithm won), ``chosen_by``
    (``"nmi"``, with the labels) and ``candidates`` (every feature tried and its NMI). Every
    value is ``None`` without labels or without a feature that can be split.
    """
    labels = np.asarray(labels, dtype=str)
    empty = {**dict.fromkeys(MEASURES), "feature": None, "chosen_by": CHOSEN_BY, "candidates": {}}
    if not (labels != "").any() or len(labels) < k:
        return empty
    candidates: dict[str, dict] = {}
    for column in features.columns:
        values = features[column].to_numpy(dtype=np.float64)
        variants = {str(column): values}
        if np.isfinite(values).all() and values.min() >= 0:
            variants[f"log {column}"] = np.log1p(values)
        for name, v in variants.items():
            clusters = cluster_1d(v, k)
            if clusters is not None:
                candidates[name] = label_scores(clusters, labels)
    if not candidates:
        return empty
    best = max(candidates, key=lambda name: candidates[name][CHOSEN_BY])
    log.info("best single feature: %s (%s %.3f)", best, CHOSEN_BY, candidates[best][CHOSEN_BY])
    return {
        **candidates[best],
        "feature": best,
        "chosen_by": CHOSEN_BY,
        "candidates": {name: scores[CHOSEN_BY] for name, scores in candidates.items()},
    }
