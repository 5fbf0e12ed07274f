import logging

import numpy as np
import pytest
import torch

from infogan_cells.analysis import quality


def test_frechet_distance_is_zero_for_identical_sets_and_analytic_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert quality.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    # N(0, I) vs N(m, 4I) in d dimensions: |m|^2 + d + 4d - 2 * 2d = |m|^2 + d
    d, m = 3, np.array([1.0, -2.0, 0.5])
    x = rng.normal(size=(20000, d))
    y = m + 2 * rng.normal(size=(20000, d))
    assert quality.frechet_distance(x, y) == pytest.approx((m**2).sum() + d, rel=0.03)


def test_frechet_distance_stays_real_for_singular_covariances():
    rng = np.random.default_rng(1)
    a = np.c_[rng.normal(size=(50, 1)), np.zeros((50, 2))]  # rank 1
    b = np.c_[rng.normal(size=(50, 2)) + 1, np.zeros((50, 1))]
    fd = quality.frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    with pytest.raises(ValueError, match="two \\(N, D\\) feature sets"):
        quality.frechet_distance(a, b[:, :2])


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = quality.kernel_distance(a, b, n_subsets=20, subset_size=200, rng=np.random.default_rng(0))
    shifted, _ = quality.kernel_distance(
        a, b + 1.0, n_subsets=20, subset_size=200, rng=np.random.default_rng(0)
    )
    assert abs(same) < 0.02
    assert shifted > 0.5
    with pytest.raises(ValueError, match="at least 2 rows"):
        quality.kernel_distance(a[:1], b, rng=np.random.default_rng(0))


def test_kid_subset_is_unbiased_mmd_by_hand():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)) + 0.5

    def k(u, v):
        return (u @ v / 2 + 1) ** 3

    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    kid, std = quality.kernel_distance(
        x, y, n_subsets=3, rng=np.random.default_rng(0)
    )  # the whole sets each time
    assert kid == pytest.approx(xx + yy - 2 * xy) and std == pytest.approx(0, abs=1e-12)


def test_knn_precision_recall_on_nested_supports():
    rng = np.random.default_rng(4)
    real = rng.uniform(-1, 1, size=(400, 2))
    inside = rng.uniform(-0.5, 0.5, size=(400, 2))  # covers a quarter of the real square
    far = rng.uniform(5, 6, size=(400, 2))
    p, r = quality.knn_precision_recall(real, inside, k=3)
    assert p > 0.9 and 0.15 < r < 0.45
    p, r = quality.knn_precision_recall(real, far, k=3)
    assert p == 0 and r == 0
    p, r = quality.knn_precision_recall(real, real.copy(), k=3)
    assert p == 1 and r == 1


def test_memorisation_ratio_is_small_for_copies_and_about_one_for_fresh_samples():
    rng = np.random.default_rng(5)
    train, holdout = rng.normal(size=(300, 6)), rng.normal(size=(100, 6))
    copies = train[:100] + 1e-3 * rng.normal(size=(100, 6))
    fresh = rng.normal(size=(100, 6))
    assert quality.memorisation(copies, holdout, train)["ratio"] < 0.01
    assert quality.memorisation(fresh, holdout, train)["ratio"] == pytest.approx(1, abs=0.25)
    np.testing.assert_allclose(quality.nearest_distance(train[:3], train), 0, atol=1e-3)


def test_encoder_trains_deterministically_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 255, size=(12, 16, 16, 2), dtype=np.uint8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    enc_a, loss_a = quality.train_encoder(images, epochs=2, batch_size=5)
    assert torch.equal(torch.get_rng_state(), state)
    enc_b, loss_b = quality.train_encoder(images, epochs=2, batch_size=5)
    fa, fb = quality.encode(enc_a, images), quality.encode(enc_b, images)
    assert fa.shape == (12, 64) and np.isfinite(loss_a)
    np.testing.assert_array_equal(fa, fb)
    assert loss_a == loss_b
    assert enc_a(quality.to_unit_range(images[:2])).shape == (2, 2, 16, 16)


def test_classifier_accuracy_on_separable_classes_and_degenerate_inputs(caplog):
    rng = np.random.default_rng(7)
    x = np.r_[rng.normal(-3, 1, size=(40, 3)), rng.normal(3, 1, size=(40, 3))]
    y = np.array(["a"] * 40 + ["b"] * 40)
    assert quality.classifier_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 1.0
    assert quality.classifier_accuracy(x[:40], y[:40], x, y) is None  # one class to learn from
    assert quality.classifier_accuracy(x, y, x[:0], y[:0]) is None
    with caplog.at_level(logging.WARNING, logger="infogan_cells.analysis.quality"):
        # labels that are pure noise on many features: may not converge; must not warn
        quality.classifier_accuracy(
            rng.normal(size=(30, 40)) * 1e3, rng.choice(["a", "b", "c"], 30), x[:2, :1].repeat(40, 1), y[:2]
        )


def _spot_cells(n, rng, spot):
    """Grey disks of random size and brightness on black, with a small dark spot somewhere inside
    when ``spot`` (a parasite, in miniature): size and brightness say nothing about the class."""
    yy, xx = np.mgrid[:32, :32]
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        r = rng.uniform(9, 14)
        cell = (yy - 16) ** 2 + (xx - 16) ** 2 <= r * r
        img = np.where(cell, rng.uniform(120, 220), 0.0)
        if spot:
            a = rng.uniform(0, 2 * np.pi)
            d = rng.uniform(0, r - 4)
            cy, cx = 16 + d * np.sin(a), 16 + d * np.cos(a)
            img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= 4, 40.0, img)
        out[i] = img[..., None].astype(np.uint8)
    return out


@pytest.mark.slow  # trains the small CNN 5 times: 20-80 s on 2 CPU cores
def test_small_cnn_finds_a_small_spot_and_is_at_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    x = np.concatenate([_spot_cells(150, rng, True), _spot_cells(150, rng, False)])
    y = np.array(["infected"] * 150 + ["healthy"] * 150)
    order = rng.permutation(300)
    x, y = x[order], y[order]
    state = torch.random.get_rng_state()
    acc = quality.cnn_accuracy(x[:200], y[:200], x[200:], y[200:], steps=100, seed=0)
    assert acc >= 0.9
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG untouched
    assert quality.cnn_accuracy(x[:200], y[:200], x[200:], y[200:], steps=100, seed=0) == acc  # seeded
    shuffled = quality.cnn_accuracy(x[:200], rng.permutation(y[:200]), x[200:], y[200:], steps=100, seed=0)
    assert shuffled < 0.75
    # a rare class is still learned (balanced sampling): 15 infected among 115 training crops
    rare = np.concatenate([np.flatnonzero(y[:200] == "infected")[:15], np.flatnonzero(y[:200] == "healthy")])
    acc_rare = quality.cnn_accuracy(x[rare], y[rare], x[200:], y[200:], steps=100, seed=0)
    test_infected = y[200:] == "infected"
    assert acc_rare >= 0.8
    assert (
        quality.cnn_accuracy(x[rare], y[rare], x[200:][test_infected], y[200:][test_infected], steps=100)
        >= 0.6
    )
    assert quality.cnn_accuracy(x[:10], np.array(["a"] * 10), x[200:], y[200:]) is None
    assert quality.cnn_accuracy(x[:10], y[:10], x[:0], y[:0]) is None
