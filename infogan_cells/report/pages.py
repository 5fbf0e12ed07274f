"""The HTML report of one analysis folder, written for a biologist rather than a programmer.

:func:`write_report` renders ``DIR/report/``: ``index.html`` (the overall measures, what each
continuous code controls, the quality of the synthetic cells, one row per category) and one
``category_XX.html`` per category (generated samples, nearest real crops, traversals, label
composition, morphology). The pages are plain files: relative links, images referenced as
``../samples/cat00.png``, no scripts or fonts from the network, so they open from a disk, a
zip or a file share. Every text from the analysis is HTML-escaped.

The report reads only what :mod:`infogan_cells.analysis.analyse` wrote (``metrics.json``, the CSV tables,
the figures); any of it may be missing, and a missing measure shows as "n/a" and a missing
figure as a note. The folder is built beside ``report/`` and renamed into place, so a killed
job leaves the previous report, never half of a new one.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from infogan_cells._io import write_text_atomic
from infogan_cells.errors import InputError

log = logging.getLogger(__name__)

REPORT_DIR = "report"
ASSETS = ("report.css", "explorer.js")
EXPLORER_FILES = ("explorer.html", "explorer")  # written by infogan_cells.report.explorer

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
        "commonest class scores only 1/K for K classes, however imbalanced the cells.",
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
CURRENT = ' class="current"'
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
PERCENT = {
    "accuracy",
    "purity",
    "knn_precision",
    "knn_recall",
    "tstr_accuracy",
    "trtr_accuracy",
    "tstr_balanced_accuracy",
    "trtr_balanced_accuracy",
    "mixed_balanced_accuracy",
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


# --------------------------------------------------------------------------------------
# HTML pieces


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, key: str = "") -> str:
    """A measure for display: "n/a" when missing, percentages for shares, 3 significant digits else."""
    v = number(value)
    if v is None:
        return "n/a"
    if key in PERCENT:
        return f"{100 * v:.1f}%"
    if float(v).is_integer() and abs(v) < 1e9:
        return f"{int(v)}"
    return f"{v:.3g}"


def href(rel: str) -> str:
    """An escaped relative URL for ``href``/``src`` (file names are URL-quoted)."""
    return esc(urllib.parse.quote(rel, safe="/.#_-"))


def page(
    title: str, body: str, *, nav: str = "", css: str = "report.css", scripts: Sequence[str] = ()
) -> str:
    tags = "".join(f'<script src="{href(s)}"></script>\n' for s in scripts)
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<link rel="icon" href="data:,">\n<link rel="stylesheet" href="{href(css)}">\n'
        f"<title>{esc(title)}</title>\n</head>\n<body>\n<header>\n{nav}\n<h1>{esc(title)}</h1>\n"
        f"</header>\n<main>\n{body}\n</main>\n<footer>Written by infogan-cells. Every page "
        f"here opens from disk; nothing is loaded from the internet.</footer>\n{tags}</body>\n</html>\n"
    )


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False, cls: str = "") -> str:
    """A table; cells are escaped unless ``raw`` (then the caller has escaped them)."""
    cell = (lambda c: c) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def figure(root: Path, rel: str, alt: str, caption: str, *, cells: bool = True) -> str:
    """``<figure>`` of ``root/rel`` referenced as ``../rel``, or a note when the file is missing.

    ``cells``: the image shows cell crops (kept pixel-sharp when scaled), not a plot.
    """
    if not (root / rel).is_file():
        return f'<p class="missing">Not available: {esc(rel)} was not written by the analysis.</p>'
    cls = ' class="cells"' if cells else ""
    return (
        f'<figure{cls}><img src="{href("../" + rel)}" alt="{esc(alt)}" loading="eager">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _num_td(value: object, key: str = "") -> str:
    return f'<span class="num">{esc(fmt(value, key))}</span>'


def _strength(rho: float | None) -> str:
    if rho is None:
        return "n/a"
    a = abs(rho)
    word = "strong" if a >= 0.7 else "moderate" if a >= 0.4 else "weak"
    direction = "increases" if rho > 0 else "decreases"
    return f"{word}: the feature {direction} as the code goes up"


def code_line(analysis: Analysis, j: int) -> str:
    """``c1 ≈ orientation, ρ = 0.93`` (plain text, not escaped)."""
    feature, rho = code_meaning(analysis, j)
    if feature is None:
        return f"c{j}: meaning not measured"
    return f"c{j} ≈ {feature}, ρ = {fmt(rho)}"


# --------------------------------------------------------------------------------------
# Pages


def _index_body(a: Analysis, explorer: bool) -> str:
    m = a.metrics
    parts = [
        f'<p class="lead">An InfoGAN learned, without being told any labels, to sort the cells of '
        f"<b>{esc(a.root.name)}</b> into {len(a.categories)} categories and to vary them along "
        f"{len(a.codes)} continuous codes. These pages show what it learned and how good its "
        "synthetic cells are. Each measure has a one-line explanation; "
        "&ldquo;n/a&rdquo; means the analysis could not compute it (for example, no annotations).</p>"
    ]
    cards = [
        ("real crops analysed", fmt(m.get("n_crops"))),
        ("categories", str(len(a.categories))),
        ("continuous codes", str(len(a.codes))),
        ("annotations", "yes" if a.has_labels else "none"),
    ]
    parts.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="value">{esc(v)}</div><div class="name">{esc(n)}</div></div>'
            for n, v in cards
        )
        + "</div>"
    )
    if explorer:
        parts.append(
            '<p><a href="explorer.html"><b>Open the cell explorer</b></a>: pick a category, move '
            "the sliders and watch the generated cell change.</p>"
        )

    parts.append("<h2>Do the categories match the annotations?</h2>")
    if not a.has_labels:
        parts.append(
            '<p class="missing">This data set has no annotations, so agreement cannot be '
            "measured; look at the category pages instead.</p>"
        )
    parts.append(
        '<p class="explain">The InfoGAN is compared with k-means clustering into the same number of '
        "groups, on raw pixels and on morphology features, and with the best one-number rule: each "
        "measured shape and intensity feature alone split into the same number of groups, the one "
        "that agrees best with the annotations kept (chosen with the annotations, so an optimistic "
        "bound). If the InfoGAN does not beat them, its categories add little.</p>"
    )
    base = _dict(m.get("baselines"))
    rows = []
    for key, name, what, better in AGREEMENT:
        vals = [_num_td(m.get(key), key)]
        for bkey, _ in BASELINES:
            vals.append(_num_td(_dict(base.get(bkey)).get(key), key))
        rows.append([esc(name), *vals, f'<span class="what">{esc(what)} Better: {esc(better)}.</span>'])
    feature = _dict(base.get("best_feature")).get("feature")
    names = [
        n if k != "best_feature" or not feature else f"{n}: {feature} (chosen with the annotations)"
        for k, n in BASELINES
    ]
    parts.append(table(["Measure", "InfoGAN", *names, "What it means"], rows, raw=True))
    ours, rule = number(m.get("nmi")), number(_dict(base.get("best_feature")).get("nmi"))
    if ours is not None and rule is not None:
        verdict = "beat" if ours > rule else "do not beat"
        parts.append(
            f"<p><b>The InfoGAN's categories {verdict} the best one-number rule</b> ({esc(feature)}): "
            f"NMI {esc(fmt(ours))} against {esc(fmt(rule))}.</p>"
        )

    parts.append("<h2>What do the continuous codes control?</h2>")
    parts.append(
        '<p class="explain">Each continuous code was moved from its lowest to its highest value '
        "while everything else stayed fixed, and shape features were measured on the generated "
        "cells. ρ is the Spearman rank correlation between the code and the feature: +1 or −1 = "
        "the feature follows the code perfectly, 0 = unrelated. The traversal pictures on each "
        "category page show the same thing visually.</p>"
    )
    if a.codes:
        rows = []
        for j in a.codes:
            feature, rho = code_meaning(a, j)
            others = _dict(_dict(_dict(m.get("codes")).get(f"c{j}")).get("all"))
            detail = ""
            if others:
                ranked = sorted(others.items(), key=lambda kv: -abs(number(kv[1]) or 0))
                detail = (
                    "<details><summary>all features</summary>"
                    + table(["feature", "ρ"], [[str(f), fmt(r)] for f, r in ranked])
                    + "</details>"
                )
            rows.append(
                [esc(code_line(a, j)), esc(feature or "n/a"), _num_td(rho), esc(_strength(rho)) + detail]
            )
        parts.append(table(["Code", "Closest feature", "ρ", "Strength"], rows, raw=True))
    else:
        parts.append('<p class="missing">No continuous codes were measured.</p>')

    parts.append("<h2>How realistic are the synthetic cells?</h2>")
    q = _dict(m.get("quality"))
    parts.append(
        table(
            ["Measure", "Value", "What it means", "Better"],
            [
                [
                    esc(name),
                    _num_td(quality_value(q, key), key),
                    f'<span class="what">{esc(what)}</span>',
                    esc(better),
                ]
                for key, name, what, better in QUALITY
            ],
            raw=True,
        )
    )
    if q.get("holdout_seen_in_training"):
        parts.append(
            '<p class="missing">The held-out real cells were also in the training set '
            "(train.holdout_fraction was 0): the memorisation ratio and train-on-synthetic-test-on-real are "
            "measured on cells the generator was trained on. Train with train.holdout_fraction above 0 "
            "for a true hold-out.</p>"
        )

    parts.append("<h2>Categories</h2>")
    parts.append(
        '<p class="explain">Size = real crops assigned to the category. Purity = share of them '
        "that carry the category's majority annotation. Confidence = how sure the network was, on "
        "average, when it assigned them (1 = certain).</p>"
    )
    if a.categories:
        total = sum(c.size or 0 for c in a.categories) or None
        rows = []
        for c in a.categories:
            thumb = (
                f'<img class="thumb" src="{href(f"../samples/{c.slug}.png")}" alt="samples of '
                f'category {c.index}">'
                if (a.root / "samples" / f"{c.slug}.png").is_file()
                else '<span class="missing">no image</span>'
            )
            share = fmt(c.size / total, "purity") if total and c.size is not None else "n/a"
            rows.append(
                [
                    f'<a href="{href(c.page)}">{esc(c.title)}</a>',
                    thumb,
                    _num_td(c.size),
                    esc(share),
                    esc(c.majority_label or "n/a"),
                    _num_td(c.purity, "purity"),
                    _num_td(c.mean_confidence),
                ]
            )
        parts.append(
            table(
                ["Category", "Samples", "Size", "Share", "Majority annotation", "Purity", "Confidence"],
                rows,
                raw=True,
            )
        )
    else:
        parts.append('<p class="missing">No categories were found in this analysis.</p>')

    files = ["metrics.json", "category_map.csv", "assignments.csv", "codes.csv", "contingency.csv"]
    present = [f for f in files if (a.root / f).is_file()]
    parts.append("<h2>Data files</h2>")
    parts.append(
        "<ul>" + "".join(f'<li><a href="{href("../" + f)}">{esc(f)}</a></li>' for f in present) + "</ul>"
        if present
        else '<p class="missing">No data files found.</p>'
    )
    return "\n".join(parts)


def _category_nav(a: Analysis, current: Category) -> str:
    links = ['<a href="index.html">&larr; Overview</a>']
    pos = a.categories.index(current)
    if pos > 0:
        links.append(f'<a href="{href(a.categories[pos - 1].page)}">previous</a>')
    if pos < len(a.categories) - 1:
        links.append(f'<a href="{href(a.categories[pos + 1].page)}">next</a>')
    cats = "".join(
        f'<a href="{href(c.page)}"{CURRENT if c is current else ""}>{c.index}</a>' for c in a.categories
    )
    return f'<nav>{"".join(links)}</nav>\n<nav class="categories">Categories: {cats}</nav>'


def _category_body(a: Analysis, c: Category) -> str:
    r = a.root
    parts = [
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="value">{esc(v)}</div><div class="name">{esc(n)}</div></div>'
            for n, v in [
                ("real crops", fmt(c.size)),
                ("majority annotation", c.majority_label or "n/a"),
                ("purity", fmt(c.purity, "purity")),
                ("mean confidence", fmt(c.mean_confidence)),
            ]
        )
        + "</div>"
    ]
    if c.label_counts:
        total = sum(c.label_counts.values()) or 1
        parts.append(
            table(
                ["Annotation", "Cells", "Share"],
                [
                    [lab, str(n), fmt(n / total, "purity")]
                    for lab, n in sorted(c.label_counts.items(), key=lambda kv: -kv[1])
                ],
            )
        )
    parts.append("<h2>Generated cells</h2>")
    parts.append(
        figure(
            r,
            f"samples/{c.slug}.png",
            f"generated cells of category {c.index}",
            "Cells the generator makes for this category, each from different random noise. "
            "They should look alike in what defines the category and differ in the rest.",
        )
    )
    parts.append("<h2>Nearest real cells</h2>")
    parts.append(
        figure(
            r,
            f"nearest/{c.slug}.png",
            f"real crops nearest to category {c.index}",
            "Real crops that the network assigns to this category most confidently: what the "
            "category corresponds to in your data.",
        )
    )
    parts.append("<h2>Traversals: what each continuous code changes</h2>")
    if not a.codes:
        parts.append('<p class="missing">No continuous codes were measured.</p>')
    for j in a.codes:
        parts.append(f"<h3>{esc(code_line(a, j))}</h3>")
        strip = figure(
            r,
            f"traversals/{c.slug}_code{j}.png",
            f"traversal of code c{j}",
            f"Each row is one cell; left to right, code c{j} goes from its lowest to its highest "
            "value with everything else fixed.",
        )
        gif = figure(
            r,
            f"traversals/{c.slug}_code{j}.gif",
            f"animated traversal of code c{j}",
            "The same traversal as an animation.",
        )
        parts.append(f'<div class="pair">{strip}{gif}</div>')
    parts.append("<h2>Annotation composition</h2>")
    if a.has_labels:
        parts.append(
            figure(
                r,
                f"composition/{c.slug}.png",
                f"annotations in category {c.index}",
                "Which annotations the real cells of this category carry.",
                cells=False,
            )
        )
    else:
        parts.append('<p class="missing">No annotations in this data set.</p>')
    parts.append("<h2>Morphology: real versus synthetic</h2>")
    parts.append(
        figure(
            r,
            f"morphology/{c.slug}.png",
            f"morphology histograms of category {c.index}",
            "Histograms of shape and intensity features for the real cells of this category and "
            "for generated ones. Overlapping histograms = realistic synthetic cells.",
            cells=False,
        )
    )
    return "\n".join(parts)


def copy_assets(dest: Path) -> None:
    """Copy the static CSS/JS into ``dest`` (atomically, file by file)."""
    pkg = resources.files("infogan_cells.report") / "assets"
    for name in ASSETS:
        write_text_atomic(dest / name, (pkg / name).read_text())


def write_index(out_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None) -> Path:
    """(Re)write only ``index.html``; :mod:`infogan_cells.report.explorer` calls this to add its link."""
    a = read_analysis(out_dir)
    report_dir = Path(report_dir) if report_dir is not None else a.root / REPORT_DIR
    path = report_dir / "index.html"
    explorer = (report_dir / "explorer.html").is_file()
    write_text_atomic(path, page(f"InfoGAN analysis: {a.root.name}", _index_body(a, explorer)))
    return path


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` at ``final``, replacing an older one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_report(
    out_dir: str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    **explorer_kwargs,
) -> Path:
    """Write ``out_dir/report/`` from the analysis files in ``out_dir``; return its ``index.html``.

    With ``run_dir`` the cell explorer is rendered too (:func:`infogan_cells.report.explorer.write_explorer`,
    ``explorer_kwargs`` go to it); without, an explorer already in ``report/`` is kept and linked.
    """
    a = read_analysis(out_dir)
    final = a.root / REPORT_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{REPORT_DIR}.", dir=a.root))
    try:
        os.chmod(tmp, 0o755)
        copy_assets(tmp)
        if run_dir is not None:
            from infogan_cells.report.explorer import render_explorer

            render_explorer(run_dir, a.root, tmp, device=device, **explorer_kwargs)
        else:
            for name in EXPLORER_FILES:
                src = final / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                elif src.is_file():
                    shutil.copy2(src, tmp / name)
        for c in a.categories:
            body = _category_body(a, c)
            write_text_atomic(tmp / c.page, page(c.title, body, nav=_category_nav(a, c)))
        write_index(a.root, tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("report: %s (%d category pages)", final / "index.html", len(a.categories))
    return final / "index.html"
