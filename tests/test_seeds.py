"""Comparing seeds' analyses and picking one without labels."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from test_report import make_analysis

from infogan_cells.analysis.seeds import compare_seeds, seed_summary
from infogan_cells.errors import InputError
from infogan_cells.report.pages import write_report


def _set_fd(path: Path, fd: float | None) -> None:
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["quality"]["fd_morphology"] = fd
    (path / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def three_seeds(tmp_path: Path) -> list[Path]:
    return [
        make_analysis(tmp_path / "seed0", sizes=[10, 13, 16], confidence=0.9, accuracy=0.9),
        make_analysis(tmp_path / "seed1", sizes=[37, 1, 1], confidence=1.0, accuracy=0.95),  # collapsed
        make_analysis(tmp_path / "seed2", sizes=[13, 13, 13], confidence=0.95, accuracy=0.7),
    ]


def test_the_score_is_confidence_times_evenness(tmp_path: Path) -> None:
    e = seed_summary(make_analysis(tmp_path / "seed0", sizes=[10, 30], n_cat=2, confidence=0.8))
    shares = [0.25, 0.75]
    evenness = -sum(p * math.log(p) for p in shares) / math.log(2)
    assert e["usage_evenness"] == pytest.approx(evenness)
    assert e["score"] == pytest.approx(0.8 * evenness)
    assert e["categories_used"] == 2 and e["n_categories"] == 2


def test_an_unused_category_lowers_evenness(tmp_path: Path) -> None:
    path = make_analysis(tmp_path / "seed0", sizes=[20, 20, 1])
    rows = (path / "assignments.csv").read_text().splitlines()
    (path / "assignments.csv").write_text("\n".join(rows[:-1]) + "\n")  # category 2 loses its only crop
    e = seed_summary(path)
    assert e["categories_used"] == 2 and e["n_categories"] == 3
    assert e["usage_evenness"] == pytest.approx(math.log(2) / math.log(3))


def test_the_confident_and_even_seed_wins_over_a_collapsed_one(
    three_seeds: list[Path], tmp_path: Path
) -> None:
    result = compare_seeds(three_seeds, tmp_path / "seeds")
    assert result["chosen"] == "seed2" and result["basis"] == "information score"
    assert [s["name"] for s in result["seeds"]] == ["seed2", "seed0", "seed1"]
    assert [s["rank"] for s in result["seeds"]] == [1, 2, 3]
    # the labels are shown, not used: seed1 has the best accuracy and ranks last
    assert result["seeds"][2]["accuracy"] == 0.95
    assert json.loads((tmp_path / "seeds" / "seeds.json").read_text()) == result


def test_the_page_shows_scores_labels_and_links(three_seeds: list[Path], tmp_path: Path) -> None:
    write_report(three_seeds[2])
    compare_seeds(three_seeds, tmp_path / "seeds")
    text = (tmp_path / "seeds" / "index.html").read_text()
    assert "seed2 ★" in text and "Information score" in text and "<th>Accuracy</th>" in text
    assert "95.0%" in text and "1 of 3" not in text and "3 of 3" in text
    link = os.path.relpath(three_seeds[2] / "report" / "index.html", tmp_path / "seeds")
    assert f'href="{link}"' in text and text.count("no report") == 2
    assert (tmp_path / "seeds" / link).is_file()


def test_without_labels_the_label_columns_are_left_out(tmp_path: Path) -> None:
    paths = [make_analysis(tmp_path / f"seed{i}", labels=False) for i in range(2)]
    compare_seeds(paths, tmp_path / "seeds")
    text = (tmp_path / "seeds" / "index.html").read_text()
    assert "<th>Accuracy</th>" not in text and "No annotations" in text


def test_without_assignments_the_morphology_distance_decides(three_seeds: list[Path], tmp_path: Path) -> None:
    for path, fd in zip(three_seeds, [3.0, 1.0, None], strict=True):
        (path / "assignments.csv").unlink()
        _set_fd(path, fd)
    result = compare_seeds(three_seeds, tmp_path / "seeds")
    assert result["chosen"] == "seed1" and result["basis"].startswith("morphology Fréchet distance")
    assert [s["name"] for s in result["seeds"]] == ["seed1", "seed0", "seed2"]


def test_equal_scores_are_broken_by_the_morphology_distance(tmp_path: Path) -> None:
    paths = [make_analysis(tmp_path / f"seed{i}") for i in range(3)]
    for path, fd in zip(paths, [2.0, None, 1.0], strict=True):
        _set_fd(path, fd)
    assert compare_seeds(paths, tmp_path / "seeds")["chosen"] == "seed2"


def test_with_nothing_measured_the_first_seed_is_taken(tmp_path: Path) -> None:
    paths = [tmp_path / "seed3", tmp_path / "seed1"]
    for p in paths:
        p.mkdir()
    result = compare_seeds(paths, tmp_path / "seeds")
    assert result["chosen"] == "seed3" and result["basis"].startswith("first seed")
    assert "n/a" in (tmp_path / "seeds" / "index.html").read_text()


def test_bad_inputs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no analysis folders given"):
        compare_seeds([], tmp_path / "seeds")
    with pytest.raises(InputError, match="seedX: analysis folder not found"):
        compare_seeds([tmp_path / "seedX"], tmp_path / "seeds")
    (tmp_path / "a" / "seed0").mkdir(parents=True)
    (tmp_path / "b" / "seed0").mkdir(parents=True)
    with pytest.raises(InputError, match="two analyses are named 'seed0'"):
        compare_seeds([tmp_path / "a" / "seed0", tmp_path / "b" / "seed0"], tmp_path / "seeds")


@pytest.mark.browser
def test_the_page_renders_without_errors(three_seeds: list[Path], tmp_path: Path) -> None:
    from browser import launch_or_skip

    for path in three_seeds:
        write_report(path)
    compare_seeds(three_seeds, tmp_path / "seeds")
    with launch_or_skip() as browser:
        page = browser.open(tmp_path / "seeds" / "index.html")
        hrefs = page.evaluate("Array.from(document.links).map(a => a.href)")
        assert len(hrefs) == 4 and all(h.startswith("file://") for h in hrefs)
        assert page.evaluate("document.querySelectorAll('tbody tr').length") == 3
        assert page.errors() == []
