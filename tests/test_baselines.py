"""The best single-feature baseline and the intensity features it draws on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from skimage import draw

from infogan_cells.analysis.baselines import best_single_feature, cluster_1d
from infogan_cells.analysis.morphology import foreground_mask, intensity_features


def cell(
    radius: float, *, inner: int, rim: int, spot: int | None = None, background: int = 230, size: int = 32
) -> np.ndarray:
    """A grey cell on a bright background: a 2-px rim of ``rim``, the inside ``inner``, and a
    3-px spot of ``spot`` at its centre (a parasite) when given."""
    img = np.full((size, size, 1), background, np.uint8)
    img[draw.disk((16, 16), radius, shape=(size, size))] = rim
    img[draw.disk((16, 16), radius - 2, shape=(size, size))] = inner
    if spot is not None:
        img[draw.disk((16, 16), 1.8, shape=(size, size))] = spot
    return img


def test_intensity_features_sum_the_stain_and_keep_the_rim_out_of_the_percentiles():
    images = np.stack([cell(10, inner=150, rim=40), cell(10, inner=150, rim=40, spot=90)])
    features = intensity_features(images, channel_names=["G"])
    assert list(features.columns) == ["total_G", "dark_G", "bright_G"]
    mask = foreground_mask(images[:1])[0]
    inside = np.zeros_like(mask)
    inside[draw.disk((16, 16), 8, shape=(32, 32))] = True
    # the stain's content: every mask pixel's distance from the background (230)
    assert features["total_G"].iloc[0] == (150 - 230) * inside.sum() + (40 - 230) * (mask & ~inside).sum()
    # the rim (40) is darker than the parasite (90), but eroded away: only the spot sets dark_G
    assert features["dark_G"].tolist() == [150, 90]
    assert features["bright_G"].tolist() == [150, 150]


def test_intensity_features_of_an_empty_crop_are_finite():
    features = intensity_features(np.full((1, 16, 16, 2), 7, np.uint8))
    assert features.iloc[0].tolist() == [0, 7, 7, 0, 7, 7]


def test_the_feature_that_carries_the_labels_is_chosen_and_scored():
    rng = np.random.default_rng(0)
    kinds = np.repeat(["infected", "uninfected"], [30, 70])  # imbalanced, as on real smears
    features = pd.DataFrame(
        {
            "area": rng.normal(300, 20, 100),  # no signal
            "dark_G": np.where(kinds == "infected", 60, 140) + rng.normal(0, 5, 100),  # all of it
            "eccentricity": rng.uniform(0, 0.5, 100),
            "constant": np.ones(100),  # cannot be split
        }
    )
    labels = kinds.copy()
    labels[::4] = ""  # unlabelled crops are clustered but not scored
    best = best_single_feature(features, labels, 2)
    assert best["feature"] == "dark_G" and best["chosen_by"] == "nmi"
    assert best["nmi"] == pytest.approx(1.0) and best["accuracy"] == pytest.approx(1.0)
    assert set(best["candidates"]) == {
        "area",
        "log area",
        "dark_G",
        "log dark_G",
        "eccentricity",
        "log eccentricity",
    }  # not the constant
    assert best["candidates"]["area"] < 0.2


def test_a_logarithm_can_win_where_groups_differ_by_a_factor():
    rng = np.random.default_rng(1)
    kinds = np.repeat(["G1", "G2", "M"], 40)
    dna = np.exp(rng.normal(0, 0.08, 120)) * np.select([kinds == "G1", kinds == "G2"], [1.0, 2.0], 16.0)
    best = best_single_feature(pd.DataFrame({"total_dna": dna * 1000}), kinds, 3)
    assert best["candidates"]["log total_dna"] > best["candidates"]["total_dna"]
    assert best["feature"] == "log total_dna" and best["nmi"] > 0.95


def test_without_labels_or_splittable_features_every_measure_is_none():
    features = pd.DataFrame({"area": np.arange(10.0)})
    for labels, frame in (([""] * 10, features), (["a", "b"] * 5, pd.DataFrame({"c": np.ones(10)}))):
        best = best_single_feature(frame, np.array(labels), 2)
        assert best["feature"] is None and best["nmi"] is None and best["accuracy"] is None
    assert cluster_1d(np.array([1.0, 1.0, 2.0]), 3) is None
    assert cluster_1d(np.array([1.0, np.nan, 2.0]), 2) is None


def test_the_report_shows_the_rule_beside_the_infogan_and_says_which_wins(tmp_path):
    from test_report import make_analysis

    from infogan_cells.report.pages import write_report

    out = make_analysis(tmp_path / "seed0")  # the InfoGAN's NMI: 0.61
    metrics = json.loads((out / "metrics.json").read_text())
    for rule_nmi, verdict in ((0.9, "do not beat"), (0.4, "beat")):
        metrics["baselines"]["best_feature"] = {
            "accuracy": 0.93,
            "nmi": rule_nmi,
            "ari": 0.7,
            "purity": 0.93,
            "feature": "dark_G",
            "chosen_by": "nmi",
            "candidates": {},
        }
        (out / "metrics.json").write_text(json.dumps(metrics))
        text = write_report(out).read_text()
        assert "best single feature: dark_G (chosen with the annotations)" in text and "93.0%" in text
        assert (
            f"categories {verdict} the best one-number rule</b> (dark_G): NMI 0.61 against {rule_nmi}" in text
        )
