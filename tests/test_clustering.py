"""Agreement of a clustering with known classes: Hungarian accuracy, NMI, ARI, purity, Q assignments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infogan_cells.analysis.clustering import (
    agreement,
    contingency,
    hungarian_accuracy,
    hungarian_mapping,
    many_to_one_accuracy,
)
from infogan_cells.analysis.codes import assign_with_q
from infogan_cells.config import LatentSpec
from infogan_cells.model.networks import Discriminator


def test_relabelled_clustering_is_perfect():
    y = np.array(["a", "a", "b", "b", "c", "c"])
    pred = np.array([2, 2, 0, 0, 1, 1])
    assert hungarian_mapping(y, pred) == {2: "a", 0: "b", 1: "c"}
    assert agreement(y, pred) == {
        "acc": 1.0,
        "nmi": pytest.approx(1.0),
        "ari": pytest.approx(1.0),
        "purity": 1.0,
    }


def test_hungarian_is_one_to_one_and_purity_many_to_one():
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2])  # class 0 split over two clusters
    assert hungarian_accuracy(y, pred) == pytest.approx(4 / 6)
    assert many_to_one_accuracy(y, pred) == 1.0
    assert len(hungarian_mapping(y, pred)) == 2  # one cluster stays unmatched


def test_known_value():
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 1])
    assert hungarian_accuracy(y, pred) == pytest.approx(0.8)
    counts, clusters, classes = contingency(y, pred)
    assert counts.tolist() == [[1, 0], [1, 3]]
    assert clusters.tolist() == [0, 1] and classes.tolist() == [0, 1]


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="equal length"):
        hungarian_accuracy([0, 1], [0])


def test_assign_with_q_shapes_and_batch_independence():
    D = Discriminator(LatentSpec(z_dim=2, categorical=[5], n_continuous=1), img_size=16, channels=2, width=4)
    images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 2), dtype=np.uint8)
    cats, probs = assign_with_q(D, images, batch_size=3)
    cats2, probs2 = assign_with_q(D, images, batch_size=7)
    assert cats.shape == (7,) and probs.shape == (7, 5)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(probs), torch.from_numpy(probs2), rtol=1e-5, atol=1e-6)
    assert not D.training
    empty, p = assign_with_q(D, images[:0])
    assert empty.shape == (0,) and p.shape == (0, 5)
