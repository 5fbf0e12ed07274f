"""How well categories match labels, and what continuous codes correlate with.

Categories against labels: the contingency table, the agreement measures of
:mod:`infogan_cells.analysis.clustering` (Hungarian accuracy, where with more categories than labels the
unmatched categories count as wrong; NMI; ARI; many-to-one purity) and each category's purity.
Only crops with a label take part; with none, every measure is ``None``.

Codes against measurements: Spearman's rank correlation of each code with each feature.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from infogan_cells.analysis.clustering import agreement, contingency

log = logging.getLogger(__name__)


def contingency_table(categories: np.ndarray, labels: np.ndarray, n_categories: int) -> pd.DataFrame:
    """Counts of labelled crops per (category, label).

    ``labels`` holds strings, ``""`` where unknown; those crops are left out. Rows are every
    category ``0 .. n_categories - 1`` (index named ``category``), columns the sorted labels.
    """
    categories = np.asarray(categories, dtype=np.int64)
    labels = np.asarray(labels, dtype=str)
    known = labels != ""
    counts, rows, names = contingency(labels[known], categories[known])
    table = np.zeros((n_categories, len(names)), dtype=np.int64)
    table[rows] = counts
    names = names.tolist()
    return pd.DataFrame(table, index=pd.RangeIndex(n_categories, name="category"), columns=names)


def label_scores(categories: np.ndarray, labels: np.ndarray) -> dict:
    """``accuracy`` (Hungarian, one-to-one), ``nmi``, ``ari`` and ``purity`` (many-to-one accuracy)
    over the labelled crops; ``None`` each without labels."""
    labels = np.asarray(labels, dtype=str)
    known = labels != ""
    if not known.any():
        return {"accuracy": None, "nmi": None, "ari": None, "purity": None}
    scores = agreement(labels[known], np.asarray(categories)[known])
    return {"accuracy": scores["acc"], "nmi": scores["nmi"], "ari": scores["ari"], "purity": scores["purity"]}


def category_summary(categories: np.ndarray, table: pd.DataFrame) -> dict:
    """Per category: ``size`` (all crops assigned), ``purity`` (share of its labelled crops that
    carry its most common label), ``majority_label`` and ``label_counts``; ``None`` where the
    category holds no labelled crop."""
    sizes = np.bincount(np.asarray(categories, dtype=np.int64), minlength=len(table))
    out = {}
    for k in range(len(table)):
        row = table.iloc[k]
        n_labelled = int(row.sum())
        entry = {
            "size": int(sizes[k]),
            "purity": None,
            "majority_label": None,
            "label_counts": {str(lab): int(v) for lab, v in row.items() if v > 0},
        }
        if n_labelled:
            entry["majority_label"] = str(row.idxmax())
            entry["purity"] = float(row.max() / n_labelled)
        out[str(k)] = entry
    return out


def spearman_table(
    codes: np.ndarray, features: pd.DataFrame, *, code_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Spearman's rho and its p-value for every (code, feature) pair.

    codes : (N, J) values of J codes; features : N rows. A constant feature (or code) has no
    rank correlation: its rho and p are NaN rather than scipy's warning.
    Returns columns ``code, feature, rho, p``.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) != len(features):
        raise ValueError(f"codes must be (N, J) with N = {len(features)}, got {codes.shape}")
    names = list(code_names) if code_names is not None else [f"c{j}" for j in range(codes.shape[1])]
    rows = []
    for j, name in enumerate(names):
        x = codes[:, j]
        for feat in features.columns:
            y = features[feat].to_numpy(dtype=np.float64)
            if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
                rho, p = np.nan, np.nan
            else:
                res = stats.spearmanr(x, y)
                rho, p = float(res.statistic), float(res.pvalue)
            rows.append({"code": name, "feature": str(feat), "rho": rho, "p": p})
    return pd.DataFrame(rows, columns=["code", "feature", "rho", "p"])


def pinned_codes(D, channel_names: list[str]) -> dict[str, str]:
    """``{"c0": "log_total:DNA"}`` for the codes training pinned to a measure (``train.code_measures``)."""
    pins = getattr(D.trunk, "pins", None)
    if pins is None:
        return {}
    return {f"c{j}": f"{pins.codes[j][0]}:{channel_names[pins.codes[j][1]]}" for j in pins.pinned}


def name_codes(table: pd.DataFrame, pinned: dict[str, str] | None = None) -> dict:
    """Each code named by the feature with the largest |rho|: ``{"c0": {"feature", "rho", "all"}}``,
    with ``"pinned"``: the measure training pinned the code to, for those in ``pinned``.

    ``all`` maps every feature to its rho (``None`` where undefined); ``feature`` and ``rho``
    are ``None`` when no feature has a defined rho.
    """
    pinned = pinned or {}
    out = {}
    for code, group in table.groupby("code", sort=False):
        rhos = {
            f: (None if np.isnan(r) else float(r))
            for f, r in zip(group["feature"], group["rho"], strict=True)
        }
        defined = {f: r for f, r in rhos.items() if r is not None}
        best = max(defined, key=lambda f: abs(defined[f])) if defined else None
        out[str(code)] = {"feature": best, "rho": defined.get(best) if best else None, "all": rhos}
        if str(code) in pinned:
            out[str(code)]["pinned"] = pinned[str(code)]
    return out
