"""The HTML report of an analysis folder: built from fake analysis folders written here."""

from __future__ import annotations

import contextlib
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from infogan_cells.errors import InputError
from infogan_cells.report import pages as report
from infogan_cells.report.folder import read_analysis
from infogan_cells.report.pages import write_report

LABELS = ["ring", "trophozoite", "<b>RBC</b> & co"]


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _gif(path: Path) -> None:
    frames = [Image.new("P", (16, 16), i * 40) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_analysis(
    root: Path,
    *,
    n_cat: int = 3,
    n_codes: int = 2,
    labels: bool = True,
    sizes: list[int] | None = None,
    confidence: float = 0.9,
    figures: bool = True,
    accuracy: float = 0.8,
) -> Path:
    """A fake analysis folder in the layout :mod:`infogan_cells.analysis.analyse` writes."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or [10 + 3 * k for k in range(n_cat)]
    cats, rows = {}, []
    for k in range(n_cat):
        lab = LABELS[k % len(LABELS)] if labels else None
        counts = {lab: sizes[k] - 1, LABELS[(k + 1) % len(LABELS)]: 1} if labels else {}
        cats[str(k)] = {
            "size": sizes[k],
            "purity": (sizes[k] - 1) / sizes[k] if labels else None,
            "majority_label": lab,
            "label_counts": counts,
        }
        rows += [
            {
                "crop_index": len(rows) + i,
                "category": k,
                "confidence": confidence,
                **{f"cont_{j}": 0.1 * j for j in range(n_codes)},
                "label": lab or "",
            }
            for i in range(sizes[k])
        ]
    metrics = {
        "accuracy": accuracy if labels else None,
        "nmi": 0.61 if labels else None,
        "ari": 0.52 if labels else None,
        "n_crops": sum(sizes),
        "n_categories": n_cat,
        "categories": cats,
        "baselines": {
            "kmeans_pixels": {"accuracy": 0.4 if labels else None, "nmi": 0.2, "ari": None},
            "kmeans_morphology": {"accuracy": 0.5 if labels else None, "nmi": 0.3, "ari": 0.1},
        },
        "codes": {
            f"c{j}": {
                "feature": ["orientation", "area", "eccentricity"][j % 3],
                "rho": 0.93 - 0.5 * j,
                "all": {"orientation": 0.93 - 0.5 * j, "area": 0.1},
            }
            for j in range(n_codes)
        },
        "quality": {
            "fd_morphology": 1.234,
            "kid_morphology": 0.01,
            "fd_encoder": None,
            "kid_encoder": 0.02,
            "knn_precision": 0.71,
            "knn_recall": 0.42,
            "memorisation_ratio": 1.05,
            "tstr_accuracy": 0.66 if labels else None,
            "trtr_accuracy": 0.8 if labels else None,
        },
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    _csv(root / "assignments.csv", rows)
    _csv(
        root / "category_map.csv",
        [
            {
                "category": k,
                "label": cats[str(k)]["majority_label"] or f"category_{k:02d}",
                "purity": cats[str(k)]["purity"],
                "size": sizes[k],
            }
            for k in range(n_cat)
        ],
    )
    _csv(
        root / "codes.csv",
        [{"code": f"c{j}", "feature": "area", "rho": 0.1, "p": 0.5} for j in range(n_codes)],
    )
    if labels:
        _csv(
            root / "contingency.csv",
            [
                {"category": k, **{lab: cats[str(k)]["label_counts"].get(lab, 0) for lab in LABELS}}
                for k in range(n_cat)
            ],
        )
    if figures:
        for k in range(n_cat):
            for sub in ["samples", "nearest", "morphology"] + (["composition"] if labels else []):
                _png(root / sub / f"cat{k:02d}.png", (40 * k, 100, 200))
            for j in range(n_codes):
                _png(root / "traversals" / f"cat{k:02d}_code{j}.png", (200, 40 * j, 10))
                _gif(root / "traversals" / f"cat{k:02d}_code{j}.gif")
    return root


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(a[key])
        if tag == "img":
            self.imgs.append(a["src"])


def links(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text())
    return p


def pages(out: Path) -> list[Path]:
    return sorted((out / "report").glob("*.html"))


@contextlib.contextmanager
def edited_metrics(out: Path):
    """``out/metrics.json`` as a dict to change in the ``with`` block; written back after it."""
    metrics = json.loads((out / "metrics.json").read_text())
    yield metrics
    (out / "metrics.json").write_text(json.dumps(metrics))


# --------------------------------------------------------------------------------------


def test_report_has_an_index_and_one_page_per_category(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    index = write_report(out)
    assert index == out / "report" / "index.html"
    assert [p.name for p in pages(out)] == [
        "category_00.html",
        "category_01.html",
        "category_02.html",
        "index.html",
    ]
    refs = links(index).refs
    for k in range(3):
        assert f"category_{k:02d}.html" in refs
    text = index.read_text()
    assert "c0 ≈ orientation, ρ = 0.93" in text
    assert "80.0%" in text and "0.61" in text and "1.23" in text  # accuracy, NMI, Fréchet distance
    assert "k-means on pixels" in text and "40.0%" in text


def test_every_link_is_relative_and_resolves(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    for page in pages(out):
        for ref in links(page).refs:
            assert not re.match(r"[a-z]+://", ref), (page.name, ref)
            if ref.startswith("data:"):
                continue
            assert (page.parent / ref.split("#")[0]).is_file(), (page.name, ref)
    for path in (out / "report").rglob("*"):
        if path.suffix in (".html", ".css", ".js"):
            assert "http://" not in path.read_text() and "https://" not in path.read_text(), path


def test_category_page_shows_every_figure(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    imgs = links(out / "report" / "category_01.html").imgs
    assert imgs == [
        "../samples/cat01.png",
        "../nearest/cat01.png",
        "../traversals/cat01_code0.png",
        "../traversals/cat01_code0.gif",
        "../traversals/cat01_code1.png",
        "../traversals/cat01_code1.gif",
        "../composition/cat01.png",
        "../morphology/cat01.png",
    ]


def test_a_holdout_seen_in_training_is_flagged(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    note = "held-out real cells were also in the training set"
    assert note not in (out / "report" / "index.html").read_text()
    with edited_metrics(out) as metrics:
        metrics["quality"]["holdout_seen_in_training"] = True
    write_report(out)
    assert note in (out / "report" / "index.html").read_text()


def test_missing_measures_and_figures_render_as_notes(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0", figures=False)
    with edited_metrics(out) as metrics:
        del metrics["quality"], metrics["baselines"]
        metrics["nmi"] = None
    write_report(out)
    index = (out / "report" / "index.html").read_text()
    assert index.count("n/a") >= 9 + 6  # the quality table, the baselines and NMI
    cat = (out / "report" / "category_00.html").read_text()
    assert "Not available: samples/cat00.png" in cat and "<img" not in cat


def test_an_empty_folder_still_gets_a_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "seed0").mkdir()
    index = write_report(tmp_path / "seed0")
    assert "No categories were found" in index.read_text()
    assert "metrics.json: missing" in caplog.text


def test_unreadable_metrics_are_tolerated(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    (out / "metrics.json").write_text("{not json")
    write_report(out)
    # categories then come from category_map.csv and the assignments
    a = read_analysis(out)
    assert [c.size for c in a.categories] == [10, 13, 16]
    assert a.categories[0].label == "ring"


def test_malformed_entries_read_as_missing(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0", n_cat=2)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "accuracy": "high",
                "n_categories": "two",
                "categories": [1, 2],
                "baselines": 3,
                "quality": "good",
                "codes": {"c0": "orientation", "c1": {"feature": "area", "rho": "strong", "all": [1]}},
            }
        )
    )
    index = write_report(out).read_text()
    assert "c1 ≈ area, ρ = n/a" in index and "c0: meaning not measured" in index
    assert [c.size for c in read_analysis(out).categories] == [10, 13]  # from category_map.csv


def test_categories_come_from_figures_when_tables_are_missing(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0", n_cat=2)
    for name in ("metrics.json", "category_map.csv", "assignments.csv"):
        (out / name).unlink()
    assert [c.index for c in read_analysis(out).categories] == [0, 1]
    assert read_analysis(out).codes == [0, 1]


def test_text_from_the_analysis_is_escaped(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    with edited_metrics(out) as metrics:
        metrics["codes"]["c0"]["feature"] = "<script>alert(1)</script>"
    write_report(out)
    for page in pages(out):
        text = page.read_text()
        assert "<script>alert" not in text and "<b>RBC" not in text
    assert "&lt;b&gt;RBC&lt;/b&gt; &amp; co" in (out / "report" / "category_02.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (out / "report" / "index.html").read_text()


def test_a_pinned_code_says_what_it_was_pinned_to(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    with edited_metrics(out) as metrics:
        metrics["codes"]["c1"]["pinned"] = "log_total:DNA"
    write_report(out)
    text = (out / "report" / "index.html").read_text()
    assert "c1 (pinned to log_total:DNA) ≈ area" in text
    assert "c0 ≈ orientation" in text  # a free code says nothing of the kind


def test_without_labels_agreement_is_not_available(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0", labels=False)
    write_report(out)
    index = (out / "report" / "index.html").read_text()
    assert "no annotations, so agreement cannot be measured" in index
    cat = (out / "report" / "category_00.html").read_text()
    assert "No annotations in this data set" in cat and "composition/" not in cat
    assert read_analysis(out).categories[0].label is None  # "category_00" is a placeholder, not a name


def test_nested_quality_layout_is_read(tmp_path: Path) -> None:
    quality = {
        "morphology": {"frechet": 2.5, "kid": 0.03},
        "encoder": {"frechet": 7.25, "precision": 0.5},
        "memorisation": {"pixels": {"ratio": 0.98}},
        "classifier": {"tstr_accuracy": 0.7},
    }
    assert report.quality_value(quality, "fd_morphology") == 2.5
    assert report.quality_value(quality, "knn_precision") == 0.5
    assert report.quality_value(quality, "memorisation_ratio") == 0.98
    assert report.quality_value(quality, "trtr_accuracy") is None
    assert (
        report.quality_value({"fd_morphology": None, "morphology": {"frechet": 1}}, "fd_morphology") is None
    )
    assert report.quality_value(None, "fd_morphology") is None


@pytest.mark.parametrize(
    ("value", "key", "text"),
    [
        (None, "", "n/a"),
        (float("nan"), "", "n/a"),
        ("x", "", "n/a"),
        (True, "", "n/a"),
        (3, "", "3"),
        (0.12345, "", "0.123"),
        (0.875, "accuracy", "87.5%"),
        (1234.5, "", "1.23e+03"),
    ],
)
def test_fmt(value: object, key: str, text: str) -> None:
    assert report.fmt(value, key) == text


def test_a_failed_write_leaves_the_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    before = {p.name: p.read_text() for p in pages(out)}

    def boom(*args: object) -> str:
        raise RuntimeError("killed")

    monkeypatch.setattr(report, "_category_body", boom)
    with pytest.raises(RuntimeError, match="killed"):
        write_report(out)
    assert {p.name: p.read_text() for p in pages(out)} == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_rewriting_keeps_and_links_an_existing_explorer(tmp_path: Path) -> None:
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    assert "explorer.html" not in links(out / "report" / "index.html").refs
    (out / "report" / "explorer.html").write_text("<!doctype html><title>x</title>")
    (out / "report" / "explorer").mkdir()
    (out / "report" / "explorer" / "index.js").write_text("window.X = 1;")
    write_report(out)
    assert (out / "report" / "explorer" / "index.js").read_text() == "window.X = 1;"
    assert "explorer.html" in links(out / "report" / "index.html").refs


def test_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="analysis folder not found"):
        write_report(tmp_path / "nope")


# --------------------------------------------------------------------------------------
# In a browser


@pytest.fixture(scope="module")
def browser():
    from browser import launch_or_skip

    b = launch_or_skip()
    yield b
    b.close()


IMAGES_LOADED = (
    "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
)


@pytest.mark.browser
def test_every_page_renders_without_errors_and_loads_its_images(tmp_path: Path, browser) -> None:
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    for path in pages(out):
        page = browser.open(path)
        assert page.evaluate("document.querySelector('h1').textContent")
        images = page.evaluate(IMAGES_LOADED)
        assert images and all(ok for _, ok in images), (path.name, images)
        assert page.errors() == [], path.name
        page.close()


@pytest.mark.browser
def test_pages_with_missing_figures_render_without_errors(tmp_path: Path, browser) -> None:
    out = make_analysis(tmp_path / "seed0", figures=False, labels=False)
    write_report(out)
    for path in pages(out):
        page = browser.open(path)
        assert page.evaluate("document.images.length") == 0
        assert page.errors() == [], path.name
        page.close()


@pytest.mark.browser
def test_the_error_collector_sees_a_broken_image(tmp_path: Path, browser) -> None:
    # The two tests above are only as good as this: a missing image must show up as an error.
    (tmp_path / "page.html").write_text('<!doctype html><title>t</title><img src="missing.png">')
    page = browser.open(tmp_path / "page.html")
    assert page.evaluate(IMAGES_LOADED) == [["missing.png", False]]
    assert any("ERR_FILE_NOT_FOUND" in e for e in page.errors())
    page.close()
