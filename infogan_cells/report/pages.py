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

import logging
import os
import shutil
import tempfile
from pathlib import Path

from infogan_cells._io import atomic_path, write_text_atomic
from infogan_cells.report.folder import (
    AGREEMENT,
    BASELINES,
    QUALITY,
    Analysis,
    Category,
    _dict,
    code_meaning,
    number,
    quality_value,
    read_analysis,
)
from infogan_cells.report.html import (
    CURRENT,
    REPORT_DIR,
    copy_assets,
    esc,
    figure,
    fmt,
    href,
    num_td,
    page,
    replace_dir,
    table,
)

log = logging.getLogger(__name__)


EXPLORER_FILES = ("explorer.html", "explorer")  # written by infogan_cells.report.explorer


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
    pinned = _dict(_dict(analysis.metrics.get("codes")).get(f"c{j}")).get("pinned")
    pin = f" (pinned to {pinned})" if pinned else ""
    if feature is None:
        return f"c{j}{pin}: meaning not measured"
    return f"c{j}{pin} ≈ {feature}, ρ = {fmt(rho)}"


# --------------------------------------------------------------------------------------
# Pages


def _with_sd(quality: dict, key: str) -> str:
    """A quality measure's cell, with "± sd" when the figure is a mean over classifier seeds."""
    sd = number(quality.get(f"{key}_sd"))
    return num_td(quality_value(quality, key), key) + ("" if sd is None else f" ± {esc(fmt(sd, key))}")


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
        vals = [num_td(m.get(key), key)]
        for bkey, _ in BASELINES:
            vals.append(num_td(_dict(base.get(bkey)).get(key), key))
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
                [esc(code_line(a, j)), esc(feature or "n/a"), num_td(rho), esc(_strength(rho)) + detail]
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
                    _with_sd(q, key),
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
                    num_td(c.size),
                    esc(share),
                    esc(c.majority_label or "n/a"),
                    num_td(c.purity, "purity"),
                    num_td(c.mean_confidence),
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


def write_index(out_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None) -> Path:
    """(Re)write only ``index.html``; :func:`write_explorer` calls this to add its link."""
    a = read_analysis(out_dir)
    report_dir = Path(report_dir) if report_dir is not None else a.root / REPORT_DIR
    path = report_dir / "index.html"
    explorer = (report_dir / "explorer.html").is_file()
    write_text_atomic(path, page(f"InfoGAN analysis: {a.root.name}", _index_body(a, explorer)))
    return path


def write_report(
    out_dir: str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    **explorer_kwargs,
) -> Path:
    """Write ``out_dir/report/`` from the analysis files in ``out_dir``; return its ``index.html``.

    With ``run_dir`` the cell explorer is rendered too (:func:`infogan_cells.report.pages.write_explorer`,
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


def write_explorer(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_noise_seeds: int = 4,
    n_steps: int = 7,
    device: str = "cpu",
    max_tiles: int | None = None,
    live: bool = True,
) -> Path:
    """Write the explorer into ``out_dir/report/`` (replacing an older one) and return its page.

    If the report's ``index.html`` is already there it is rewritten to link the explorer.
    ``max_tiles`` defaults to :data:`infogan_cells.report.explorer.MAX_TILES`.
    """
    from infogan_cells.report.explorer import MAX_TILES, render_explorer  # torch, only when asked

    out_dir = Path(out_dir)
    report_dir = out_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".explorer.", dir=report_dir))
    try:
        render_explorer(
            run_dir,
            out_dir,
            tmp,
            n_noise_seeds=n_noise_seeds,
            n_steps=n_steps,
            device=device,
            max_tiles=MAX_TILES if max_tiles is None else max_tiles,
            live=live,
        )
        copy_assets(report_dir)
        replace_dir(tmp / "explorer", report_dir / "explorer")
        with atomic_path(report_dir / "explorer.html") as dest:
            os.replace(tmp / "explorer.html", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if (report_dir / "index.html").is_file():
        write_index(out_dir)
    log.info("explorer: %s", report_dir / "explorer.html")
    return report_dir / "explorer.html"
