"""Reading an analysis folder (every piece optional) into an :class:`Analysis`, and the measures
the pages show, each with its plain-language meaning."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from infogan_cells.errors import InputError

log = logging.getLogger(__name__)


# (key, name, plain-language meaning, which way is better)
AGREEMENT = [
    (
        "accuracy",
        "Accuracy",
        "Share of annotated cells grouped correctly when each category is paired with one annotation "
        "(the pairing that gets the most cells right).",
        "higher; 100% = every cell matches",
    ),
    (
        "nmi",
        "NMI (normalised mutual information)",
        "How much knowing a cell's category tells you about its annotation, whatever the category numbers. "
        "0 = nothing, 1 = the categories reproduce the annotations exactly.",
        "higher; 0 to 1",
    ),
    (
        "ari",
        "ARI (adjusted Rand index)",
        "Agreement between categories and annotations over all pairs of cells, corrected for chance. "
        "0 = no better than random grouping, 1 = identical grouping.",
        "higher; about 0 to 1",
    ),
]
BASELINES = [
    ("kmeans_pixels", "k-means on pixels"),
    ("kmeans_morphology", "k-means on morphology"),
    ("best_feature", "best single feature"),
]
QUALITY = [
    (
        "fd_morphology",
        "Fréchet distance, morphology",
        "Distance between real and synthetic cells in measured shape and intensity features (area, "
        "eccentricity, mean intensity, ...). 0 = the two populations have the same averages and spreads.",
        "lower",
    ),
    (
        "kid_morphology",
        "Kernel distance (KID), morphology",
        "Like the Fréchet distance on the same features, but unbiased for small numbers of cells; "
        "values near 0 mean no detectable difference.",
        "lower",
    ),
    (
        "fd_encoder",
        "Fréchet distance, learned features",
        "The same comparison in the features of a small network trained on the real crops; it sees "
        "texture and detail that the morphology features miss.",
        "lower",
    ),
    (
        "kid_encoder",
        "Kernel distance (KID), learned features",
        "Small-sample version of the previous line.",
        "lower",
    ),
    (
        "knn_precision",
        "Realism (k-NN precision)",
        "Share of synthetic cells that look like some real cell (fall inside the real cells' cloud). "
        "Low = many implausible cells.",
        "higher",
    ),
    (
        "knn_recall",
        "Coverage (k-NN recall)",
        "Share of real cells that some synthetic cell resembles. Low = the generator misses kinds of "
        "cells (for example a rare stage).",
        "higher",
    ),
    (
        "memorisation_ratio",
        "Memorisation ratio",
        "How close synthetic cells sit to the training cells, relative to new real cells held out from "
        "training. About 1 = no copying; well below 1 = the generator may be reproducing training cells.",
        "about 1; below 1 is a warning",
    ),
    (
        "tstr_accuracy",
        "Train on synthetic, test on real",
        "Accuracy on held-out real cells of a classifier trained only on synthetic cells (labelled through "
        "the category map). Close to the next line = the synthetic data teach as much as real data.",
        "higher",
    ),
    (
        "trtr_accuracy",
        "Train on real, test on real",
        "The same classifier trained on real cells: the ceiling for the previous line.",
        "higher",
    ),
    (
        "tstr_balanced_accuracy",
        "Train on synthetic, test on real: balanced accuracy",
        "The average over annotated classes of the share of that class's held-out real cells the classifier "
        "trained on synthetic cells gets right. Unlike plain accuracy, a classifier that always answers the "
        "commonest class scores only 1/K for K classes, however imbalanced the cells. The mean over "
        "classifiers trained from several seeds (analyse.classifier_seeds), with their sd.",
        "higher; 1/K = chance",
    ),
    (
        "trtr_balanced_accuracy",
        "Labelled real only: balanced accuracy",
        "The same classifier trained on the annotated real cells (of the training split) instead.",
        "higher; 1/K = chance",
    ),
    (
        "mixed_balanced_accuracy",
        "Labelled real + synthetic: balanced accuracy",
        "The same classifier trained on the annotated real cells and the synthetic cells together (half of "
        "each class's examples from each); measured when only some cells carry annotations. Above the "
        "previous line = the synthetic cells add something to the few annotated ones.",
        "higher; 1/K = chance",
    ),
]

# Where an older or nested metrics.json keeps a quality measure (the flat key is the contract)
QUALITY_PATHS = {
    "fd_morphology": [("morphology", "frechet")],
    "kid_morphology": [("morphology", "kid")],
    "fd_encoder": [("encoder", "frechet")],
    "kid_encoder": [("encoder", "kid")],
    "knn_precision": [("encoder", "precision")],
    "knn_recall": [("encoder", "recall")],
    "memorisation_ratio": [("memorisation", "encoder", "ratio"), ("memorisation", "pixels", "ratio")],
    "tstr_accuracy": [("classifier", "tstr_accuracy")],
    "trtr_accuracy": [("classifier", "trtr_accuracy")],
    **{
        f"{k}_balanced_accuracy": [("classifier", f"{k}_balanced_accuracy")]
        for k in ("tstr", "trtr", "mixed")
    },
}

# --------------------------------------------------------------------------------------
# Reading an analysis folder (every piece optional)


def _placeholder(name: str | None) -> bool:
    """``category_07``: the analysis's name for a category that has no label."""
    return name is None or re.fullmatch(r"category_\d+", name) is not None


@dataclasses.dataclass
class Category:
    index: int
    size: int | None = None
    purity: float | None = None
    majority_label: str | None = None
    name: str | None = None  # category_map.csv's label: a semi-supervised name or the majority label
    label_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    mean_confidence: float | None = None

    @property
    def slug(self) -> str:
        return f"cat{self.index:02d}"

    @property
    def page(self) -> str:
        return f"category_{self.index:02d}.html"

    @property
    def label(self) -> str | None:
        """The name to show: the category map's label unless it is a ``category_KK`` placeholder."""
        if self.name and not _placeholder(self.name):
            return self.name
        return self.majority_label

    @property
    def title(self) -> str:
        return f"Category {self.index}" + (f" ({self.label})" if self.label else "")


@dataclasses.dataclass
class Analysis:
    """What the report needs from an analysis folder; missing pieces are None or empty."""

    root: Path
    metrics: dict
    categories: list[Category]
    codes: list[int]
    assignments: dict | None

    @property
    def has_labels(self) -> bool:
        return (
            number(self.metrics.get("accuracy")) is not None
            or any(c.majority_label for c in self.categories)
            or (self.root / "contingency.csv").exists()
        )


def number(value: object) -> float | None:
    """A finite float, or None for null, NaN, text and booleans."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _dict(value: object) -> dict:
    """``value`` if it is a dict, else ``{}``: a malformed entry reads as a missing one."""
    return value if isinstance(value, dict) else {}


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``{}`` (with a warning) when it is missing or unreadable."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        log.warning("%s: missing; its measures show as n/a", path)
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); its measures show as n/a", path, err)
        return {}
    return _dict(obj)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV table; ``[]`` when it is missing or unreadable."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        log.warning("%s: unreadable (%s)", path, err)
        return []


def read_assignments(path: Path) -> dict | None:
    """Summary of ``assignments.csv``: crops per category and mean Q confidence (overall, per category)."""
    rows = read_csv(path)
    counts: dict[int, int] = {}
    conf_sum: dict[int, float] = {}
    conf_n: dict[int, int] = {}
    for row in rows:
        k = number(row.get("category"))
        if k is None:
            continue
        k = int(k)
        counts[k] = counts.get(k, 0) + 1
        c = number(row.get("confidence"))
        if c is not None:
            conf_sum[k] = conf_sum.get(k, 0.0) + c
            conf_n[k] = conf_n.get(k, 0) + 1
    if not counts:
        return None
    n_conf = sum(conf_n.values())
    return {
        "n": sum(counts.values()),
        "counts": counts,
        "mean_confidence": sum(conf_sum.values()) / n_conf if n_conf else None,
        "confidence_by_category": {k: conf_sum[k] / conf_n[k] for k in conf_n},
    }


def _sorted_indices(*groups: Iterable[int]) -> list[int]:
    return sorted({i for g in groups for i in g if i >= 0})


def _file_indices(root: Path, pattern: str, regex: str) -> list[int]:
    return [int(m.group(1)) for p in root.glob(pattern) if (m := re.fullmatch(regex, p.name))]


def read_analysis(path: str | os.PathLike) -> Analysis:
    """Collect metrics, category tables and assignments of an analysis folder, tolerating gaps."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: analysis folder not found")
    metrics = read_json(root / "metrics.json")
    cats_json = _dict(metrics.get("categories"))
    cat_map = {
        int(k): row
        for row in read_csv(root / "category_map.csv")
        if (k := number(row.get("category"))) is not None
    }
    n = number(metrics.get("n_categories"))
    from_json = [int(k) for k in cats_json if number(k) is not None]
    indices = _sorted_indices(
        range(int(n)) if n is not None else [],
        from_json,
        cat_map,
        _file_indices(root / "samples", "cat*.png", r"cat(\d+)\.png"),
    )
    assignments = read_assignments(root / "assignments.csv")
    categories = []
    for k in indices:
        info = _dict(cats_json.get(str(k)))
        row = cat_map.get(k, {})
        size = number(info.get("size", row.get("size")))
        if size is None and assignments:
            size = assignments["counts"].get(k, 0)
        name = row.get("label") or None
        label = info.get("majority_label") if info else (None if _placeholder(name) else name)
        counts = _dict(info.get("label_counts"))
        categories.append(
            Category(
                index=k,
                size=None if size is None else int(size),
                purity=number(info.get("purity", row.get("purity"))),
                majority_label=str(label) if label else None,
                name=str(name) if name else None,
                label_counts={str(lab): int(number(c)) for lab, c in counts.items() if number(c) is not None},
                mean_confidence=(assignments or {}).get("confidence_by_category", {}).get(k),
            )
        )
    codes_json = _dict(metrics.get("codes"))
    codes = _sorted_indices(
        [int(m.group(1)) for key in codes_json if (m := re.fullmatch(r"c(\d+)", key))],
        _file_indices(root / "traversals", "cat*_code*.png", r"cat\d+_code(\d+)\.png"),
    )
    return Analysis(root, metrics, categories, codes, assignments)


def quality_value(quality: object, key: str) -> float | None:
    """A quality measure by its flat key (the contract), else from the nested layout, else None."""
    if not isinstance(quality, dict):
        return None
    if key in quality:
        return number(quality[key])
    for path in QUALITY_PATHS.get(key, []):
        node: object = quality
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if number(node) is not None:
            return number(node)
    return None


def code_meaning(analysis: Analysis, j: int) -> tuple[str | None, float | None]:
    """The feature code ``j`` follows most closely and its Spearman correlation, or Nones."""
    entry = _dict(analysis.metrics.get("codes")).get(f"c{j}")
    if not isinstance(entry, dict):
        return None, None
    feature = entry.get("feature")
    return (str(feature) if feature else None), number(entry.get("rho"))
