"""Comparing the analyses of several training seeds, and picking one without labels.

GAN training is a lottery: runs that differ only in their seed can learn different categories.
:func:`compare_seeds` reads each seed's analysis folder (its name, e.g. ``seed0``, names the seed)
and writes ``out/index.html`` and ``out/seeds.json``.

The choice is label-free, so that it works the same on unannotated data and never looks at the
annotations it would then be judged on. Each seed gets an *information score* from its
``assignments.csv`` (Q's assignment of the real crops)::

    score = mean confidence x usage evenness
    mean confidence = mean over real crops of Q's probability for the category it picked
    usage evenness  = H(share of crops per category) / log(n_categories)   (1 = all used equally)

It is the hard-assignment form of what InfoGAN maximises, the mutual information between
category and image, measured on real rather than generated cells: a seed scores high when it
assigns real cells confidently *and* spreads them over its categories. Confidence alone would
reward a collapsed run that puts every cell into one category; evenness alone would reward
random assignments. Ties are broken by the lower morphology Fréchet distance; when no seed has
assignments, that distance decides alone; when nothing is measured, the first seed is taken.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from infogan_cells._io import write_json_atomic, write_text_atomic
from infogan_cells.errors import InputError
from infogan_cells.report.folder import AGREEMENT, number, quality_value, read_analysis
from infogan_cells.report.html import copy_assets, esc, fmt, href, page, table

log = logging.getLogger(__name__)

CRITERION = (
    "information score = mean Q confidence on the real crops x evenness of category usage "
    "(entropy of the category shares / log n_categories); ties: lower morphology Fréchet distance"
)


def information_score(
    mean_confidence: float | None, counts: Sequence[int], n_categories: int
) -> tuple[float | None, float]:
    """(score, usage evenness) of a seed from Q's mean confidence on the real crops and the number of
    crops assigned to each category (see the module docstring); score is None without a confidence."""
    n = sum(counts)
    shares = [c / n for c in counts if c > 0] if n else []
    entropy = sum(-p * math.log(p) for p in shares)  # sum() starts at +0: no -0.0 for one category
    evenness = entropy / math.log(n_categories) if n_categories > 1 else 1.0
    return (None if mean_confidence is None else mean_confidence * evenness), evenness


def seed_summary(path: Path) -> dict:
    """The measures of one analysis folder that the comparison shows."""
    a = read_analysis(path)
    asg = a.assignments
    n_cat = len(a.categories) or (max(asg["counts"]) + 1 if asg else 0)
    entry: dict = {
        "name": path.name,
        "path": str(path),
        "n_categories": n_cat,
        "mean_confidence": None,
        "usage_evenness": None,
        "categories_used": None,
        "score": None,
    }
    if asg:
        score, evenness = information_score(asg["mean_confidence"], list(asg["counts"].values()), n_cat)
        entry.update(
            mean_confidence=asg["mean_confidence"],
            usage_evenness=evenness,
            categories_used=sum(1 for c in asg["counts"].values() if c > 0),
            score=score,
        )
    for key, *_ in AGREEMENT:
        entry[key] = number(a.metrics.get(key))
    quality = a.metrics.get("quality")
    for key in ("fd_morphology", "fd_encoder", "knn_precision", "knn_recall"):
        entry[key] = quality_value(quality, key)
    report = path / "report" / "index.html"
    entry["report"] = report if report.is_file() else None
    return entry


def _rank_key(entry: dict, position: int) -> tuple:
    score, fd = entry["score"], entry["fd_morphology"]
    return (score is None, -(score or 0.0), fd is None, fd or 0.0, position)


def compare_seeds(analyses: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Compare seed analyses, pick one by the information score, write ``out/index.html`` and
    ``out/seeds.json``; return the JSON's contents."""
    paths = [Path(p) for p in analyses]
    if not paths:
        raise InputError("compare-seeds: no analysis folders given")
    names: dict[str, Path] = {}
    for p in paths:
        if not p.is_dir():
            raise InputError(f"{p}: analysis folder not found")
        if p.name in names:
            raise InputError(
                f"{p}: two analyses are named {p.name!r} (also {names[p.name]}); the folder "
                "name identifies the seed"
            )
        names[p.name] = p
    out = Path(out)
    entries = [seed_summary(p) for p in paths]
    order = sorted(range(len(entries)), key=lambda i: _rank_key(entries[i], i))
    for rank, i in enumerate(order, start=1):
        entries[i]["rank"] = rank
    chosen = entries[order[0]]
    if chosen["score"] is not None:
        basis = "information score"
    elif chosen["fd_morphology"] is not None:
        basis = "morphology Fréchet distance (no seed had assignments.csv)"
    else:
        basis = "first seed given (nothing was measured)"
    for e in entries:
        e["report"] = os.path.relpath(e["report"], out) if e["report"] else None
    result = {
        "criterion": CRITERION,
        "basis": basis,
        "chosen": chosen["name"],
        "chosen_path": chosen["path"],
        "seeds": [entries[i] for i in order],
    }
    log.info("compare-seeds: chose %s of %d (%s)", chosen["name"], len(entries), basis)
    copy_assets(out)
    write_json_atomic(out / "seeds.json", result)
    write_text_atomic(out / "index.html", page("Comparing training seeds", _body(result)))
    return result


def _body(result: dict) -> str:
    seeds = result["seeds"]
    parts = [
        f'<p class="lead">{len(seeds)} networks were trained that differ only in their random seed. '
        f"The one chosen for synthesis is <b>{esc(result['chosen'])}</b> "
        f"(decided by: {esc(result['basis'])}).</p>",
        "<h2>How the seed is chosen</h2>",
        '<p class="explain">Without looking at any annotation, each seed gets an <b>information '
        "score</b>: how confidently its network assigns the real cells to categories (mean "
        "confidence, 1 = certain), times how evenly it spreads them over its categories (evenness, "
        "1 = all categories equally used, 0 = everything in one). It is high when the categories are "
        "both distinct and used. Confidence alone would favour a network that puts every cell in one "
        "category; evenness alone would favour random sorting. Ties go to the lower morphology "
        "Fréchet distance (synthetic cells closer to real ones). Annotations are shown below for "
        "checking, but never used for the choice, so the choice works the same on unannotated "
        "data.</p>",
    ]
    labelled = any(e[k] is not None for e in seeds for k, *_ in AGREEMENT)
    header = ["Rank", "Seed", "Information score", "Mean confidence", "Evenness", "Categories used"]
    if labelled:
        header += [name.split(" (")[0] for _, name, *_ in AGREEMENT]
    header += ["Fréchet distance (morphology)", "Realism", "Coverage", "Report"]
    rows = []
    for e in seeds:
        mark = " ★" if e["name"] == result["chosen"] else ""
        used = f"{e['categories_used']} of {e['n_categories']}" if e["categories_used"] is not None else "n/a"
        row = [
            esc(e["rank"]),
            esc(e["name"] + mark),
            esc(fmt(e["score"])),
            esc(fmt(e["mean_confidence"])),
            esc(fmt(e["usage_evenness"])),
            esc(used),
        ]
        if labelled:
            row += [esc(fmt(e[k], k)) for k, *_ in AGREEMENT]
        row += [
            esc(fmt(e["fd_morphology"])),
            esc(fmt(e["knn_precision"], "knn_precision")),
            esc(fmt(e["knn_recall"], "knn_recall")),
        ]
        row.append(
            f'<a href="{href(e["report"])}">report</a>'
            if e["report"]
            else '<span class="missing">no report</span>'
        )
        rows.append(row)
    parts.append("<h2>Seeds</h2>")
    parts.append(table(header, rows, raw=True))
    if not labelled:
        parts.append('<p class="explain">No annotations: accuracy, NMI and ARI cannot be shown.</p>')
    else:
        parts.append(
            '<p class="explain">Accuracy, NMI and ARI compare categories with the annotations '
            "(see any report for their meaning); they are shown to check the choice, not to make "
            "it.</p>"
        )
    parts.append(
        '<p class="explain">Realism and coverage: k-NN precision and recall of the synthetic cells '
        'in learned features. The full comparison is in <a href="seeds.json">seeds.json</a>.</p>'
    )
    return "\n".join(parts)
