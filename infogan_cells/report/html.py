"""HTML pieces shared by every page: escaping, number formats, the page frame, tables, figures,
the static assets, and putting a finished folder in place."""

from __future__ import annotations

import html
import logging
import os
import shutil
import urllib.parse
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from infogan_cells._io import write_text_atomic
from infogan_cells.report.folder import number

log = logging.getLogger(__name__)


REPORT_DIR = "report"
ASSETS = ("report.css", "explorer.js")

CURRENT = ' class="current"'

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


def num_td(value: object, key: str = "") -> str:
    return f'<span class="num">{esc(fmt(value, key))}</span>'


def copy_assets(dest: Path) -> None:
    """Copy the static CSS/JS into ``dest`` (atomically, file by file)."""
    pkg = resources.files("infogan_cells.report") / "assets"
    for name in ASSETS:
        write_text_atomic(dest / name, (pkg / name).read_text())


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
