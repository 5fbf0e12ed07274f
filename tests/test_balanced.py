"""Balanced accuracy (mean recall over classes) of the train-on-synthetic and train-on-real figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from infogan_cells.analysis import quality
from infogan_cells.analysis.synthetic import classifier_scores


def test_a_majority_class_classifier_scores_one_over_k():
    y = np.repeat(["rbc", "ring", "schizont"], [80, 15, 5])
    always = np.full(100, "rbc")
    assert (always == y).mean() == pytest.approx(0.8)  # what plain accuracy says
    assert quality.balanced_accuracy(y, always) == pytest.approx(1 / 3)
    assert quality.balanced_accuracy(y, y) == 1.0
    # one class of three wholly right, the others half right
    pred = y.copy()
    pred[80:88] = "rbc"
    pred[95:97] = "ring"
    assert pred[80:95].tolist().count("ring") == 7 and pred[95:].tolist().count("schizont") == 3
    assert quality.balanced_accuracy(y, pred) == pytest.approx((1 + 7 / 15 + 3 / 5) / 3)
    assert quality.balanced_accuracy(y[:0], y[:0]) is None
    with pytest.raises(ValueError, match="differ in shape"):
        quality.balanced_accuracy(y, y[:3])


def crops(n: int, level: np.ndarray, rng: np.random.Generator, size: int = 8) -> np.ndarray:
    noise = rng.normal(0, 4, (n, size, size, 1))
    return np.clip(level[:, None, None, None] + noise, 0, 255).astype(np.uint8)


def _scores(rng, labels, hold, train, syn_labels, images, syn_images, steps: int) -> dict:
    """``classifier_scores`` with random 2-d features, real ones first (the CNN sees the images)."""
    features, syn_features = rng.normal(size=(len(labels), 2)), rng.normal(size=(len(syn_labels), 2))
    return classifier_scores(
        features,
        labels,
        hold,
        train,
        syn_features,
        syn_labels,
        images=images,
        syn_images=syn_images,
        steps=steps,
    )


def test_figures_that_cannot_tell_classes_apart_score_one_over_k_while_accuracy_flatters():
    """Every held-out crop looks the same: whatever the classifier answers, it answers it for all,
    so on 3 imbalanced classes the balanced figures are exactly 1/3."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["rbc", "ring", "schizont"], [30, 6, 4]).astype(str)
    images = crops(40, np.select([labels == "rbc", labels == "ring"], [60.0, 130.0], 200.0), rng)
    hold = np.arange(0, 40, 2)
    images[hold] = 128  # identical held-out crops
    train = np.setdiff1d(np.arange(40), hold)
    syn_labels = np.repeat(["rbc", "ring", "schizont"], 10).astype(str)
    syn_images = crops(30, np.repeat([60.0, 130.0, 200.0], 10), rng)
    scores = _scores(rng, labels, hold, train, syn_labels, images, syn_images, steps=20)
    assert scores["n_test_classes"] == 3 and scores["labels_partial"] is False
    for name in ("tstr", "trtr"):
        assert scores[f"{name}_balanced_accuracy"] == pytest.approx(1 / 3)
        assert scores[f"{name}_accuracy"] in (15 / 20, 3 / 20, 2 / 20)  # the share of one class
    assert scores["mixed_balanced_accuracy"] is None  # every crop labelled: no mixed figure


def test_a_classifier_that_learns_scores_near_one_and_the_mixed_figure_appears_with_partial_labels():
    rng = np.random.default_rng(1)
    kinds = np.repeat(["rbc", "ring"], [48, 12]).astype(str)
    images = crops(60, np.where(kinds == "rbc", 60.0, 190.0), rng)
    labels = kinds.copy()
    labels[1::3] = ""  # a third of the crops unlabelled
    hold, train = np.arange(0, 60, 3), np.setdiff1d(np.arange(60), np.arange(0, 60, 3))
    syn_labels = np.repeat(["rbc", "ring"], 20).astype(str)
    syn_images = crops(40, np.repeat([60.0, 190.0], 20), rng)
    scores = _scores(rng, labels, hold, train, syn_labels, images, syn_images, steps=60)
    assert scores["labels_partial"] is True and scores["n_test"] == 20
    assert scores["n_real_train"] == int((labels[train] != "").sum())
    for name in ("tstr", "trtr", "mixed"):
        assert scores[f"{name}_balanced_accuracy"] >= 0.9, name
    assert scores["cnn"]["mixed_balanced_accuracy"] == scores["mixed_balanced_accuracy"]


def report_with(tmp_path, **figures) -> str:
    """The report's HTML for an analysis whose quality figures are ``figures``."""
    from test_report import make_analysis

    from infogan_cells.report.pages import write_report

    out = make_analysis(tmp_path / "seed0")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["quality"].update(figures)
    (out / "metrics.json").write_text(json.dumps(metrics))
    return write_report(out).read_text()


def test_the_report_lists_the_balanced_figures(tmp_path):
    text = report_with(
        tmp_path, tstr_balanced_accuracy=0.5, trtr_balanced_accuracy=0.875, mixed_balanced_accuracy=None
    )
    for name, value in (
        ("Train on synthetic, test on real: balanced accuracy", "50.0%"),
        ("Labelled real only: balanced accuracy", "87.5%"),
        ("Labelled real + synthetic: balanced accuracy", "n/a"),
    ):
        assert re.search(re.escape(name) + r"</td><td>(<span[^>]*>)?" + re.escape(value), text), name


def test_each_figure_is_the_mean_of_classifiers_from_several_seeds_with_their_sd():
    """An ambiguous task (synthetic classes that differ less than the real ones): the classifier's
    seed moves its answer, so the figure must be the mean over the seeds, each seed's value the one
    that seed's classifier gets alone."""
    rng = np.random.default_rng(2)
    labels = np.repeat(["rbc", "ring", "schizont"], [30, 15, 15]).astype(str)
    images = crops(60, np.select([labels == "rbc", labels == "ring"], [60.0, 130.0], 200.0), rng)
    hold, train = np.arange(0, 60, 2), np.arange(1, 60, 2)
    syn_labels = np.repeat(["rbc", "ring", "schizont"], 10).astype(str)
    syn_images = crops(30, np.repeat([125.0, 128.0, 131.0], 10), rng)
    features, syn_features = rng.normal(size=(60, 2)), rng.normal(size=(30, 2))
    args = (features, labels, hold, train, syn_features, syn_labels)
    scores = classifier_scores(*args, images=images, syn_images=syn_images, steps=15, seeds=3)
    cnn = scores["cnn"]
    alone = [
        quality.balanced_accuracy(
            labels[hold], quality.cnn_predict(syn_images, syn_labels, images[hold], steps=15, seed=s)
        )
        for s in range(3)
    ]
    assert cnn["tstr_balanced_accuracy_seeds"] == pytest.approx(alone)
    assert scores["tstr_balanced_accuracy"] == pytest.approx(np.mean(alone))
    assert cnn["tstr_balanced_accuracy_sd"] == pytest.approx(np.std(alone, ddof=1))
    assert len(set(np.round(alone, 6))) > 1  # the seeds disagree here: a figure from one would mislead
    assert len(cnn["trtr_accuracy_seeds"]) == 3 and cnn["seeds"] == 3
    one = classifier_scores(*args, images=images, syn_images=syn_images, steps=15)
    assert (
        one["tstr_balanced_accuracy"] == pytest.approx(alone[0])
        and one["cnn"]["tstr_balanced_accuracy_sd"] is None
    )


def test_the_report_shows_the_sd_over_classifier_seeds(tmp_path):
    text = report_with(tmp_path, tstr_balanced_accuracy=0.5, tstr_balanced_accuracy_sd=0.125)
    assert re.search(r"balanced accuracy</td><td>(<span[^>]*>)?50\.0%(</span>)? ± 12\.5%", text)
