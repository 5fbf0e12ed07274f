"""Tests for infogan_cells.preprocess.segment: synthetic smears drawn here, plus two real BBBC041 smears."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage import draw, io

from infogan_cells.preprocess.box_match import box_iou, match_boxes
from infogan_cells.preprocess.segment import label_cells, segment_cells

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RADIUS = 12
# Seven well separated cells on a 192 x 224 smear, so the size is estimated from the image.
CENTRES = [(30, 30), (30, 100), (30, 170), (100, 30), (100, 170), (165, 60), (165, 150)]


def smear(centres=CENTRES, *, shape=(192, 224), radius=RADIUS, pallor=0, dtype=np.uint8):
    """A bright background (200) with dark disks (90), optionally with a bright centre."""
    image = np.full(shape, 200, dtype=np.float64)
    for centre in centres:
        image[draw.disk(centre, radius, shape=shape)] = 90
        if pallor:
            image[draw.disk(centre, pallor, shape=shape)] = 200
    image += np.random.default_rng(0).normal(0, 3, shape)
    image = np.clip(image, 0, 255)
    if dtype == np.uint16:
        return (image * 257).astype(np.uint16)
    if np.issubdtype(dtype, np.floating):
        return (image / 255).astype(dtype)
    return image.astype(dtype)


def disk_boxes(centres, radius=RADIUS, shape=None):
    boxes = np.array([(r - radius, c - radius, r + radius + 1, c + radius + 1) for r, c in centres], float)
    if shape is not None:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, shape[0])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, shape[1])
    return boxes


def test_separate_disks_are_found_with_tight_boxes():
    cells = segment_cells(smear())
    assert len(cells) == len(CENTRES)
    assert match_boxes(cells, disk_boxes(CENTRES), iou=0.8) == (len(CENTRES), 0, 0)
    assert list(cells.columns[:5]) == ["label", "min_row", "min_col", "max_row", "max_col"]
    assert cells["area"].between(0.85 * np.pi * RADIUS**2, 1.15 * np.pi * RADIUS**2).all()


def test_touching_disks_are_split_in_two():
    centres = [*CENTRES[:3], *CENTRES[5:], (100, 88), (100, 108)]  # the last two overlap by 4 px
    cells = segment_cells(smear(centres))
    assert len(cells) == len(centres)
    assert match_boxes(cells, disk_boxes(centres), iou=0.6) == (len(centres), 0, 0)


def test_central_pallor_is_filled():
    cells = segment_cells(smear(pallor=5))
    assert len(cells) == len(CENTRES)
    assert cells["area"].between(0.85 * np.pi * RADIUS**2, 1.15 * np.pi * RADIUS**2).all()
    assert (cells["solidity"] > 0.9).all()


def test_uniform_image_gives_no_cells():
    for image in (np.full((64, 80), 128, np.uint8), np.zeros((64, 80, 3), np.float32)):
        cells = segment_cells(image)
        assert cells.empty
        assert {"min_row", "min_col", "max_row", "max_col", "area", "solidity"} <= set(cells.columns)
        assert not label_cells(image).any()


def test_dtype_does_not_change_the_result():
    expected = segment_cells(smear())
    for dtype in (np.uint16, np.float32, np.float64):
        pd.testing.assert_frame_equal(segment_cells(smear(dtype=dtype)), expected)


def test_rgb_uses_green_and_grey_equals_that_channel():
    grey = smear()
    rgb = np.stack([np.full_like(grey, 230), grey, np.full_like(grey, 220)], axis=-1)
    pd.testing.assert_frame_equal(segment_cells(rgb), segment_cells(grey))
    pd.testing.assert_frame_equal(segment_cells(rgb[..., [1, 0, 2]], channel=0), segment_cells(grey))
    pd.testing.assert_frame_equal(segment_cells(grey[..., None]), segment_cells(grey))


def test_bright_cells_with_dark_cells_false():
    image = smear()
    pd.testing.assert_frame_equal(segment_cells(255 - image, dark_cells=False), segment_cells(image))


def test_input_is_not_modified():
    image = smear()
    before = image.copy()
    image.flags.writeable = False  # would raise if anything wrote to it
    segment_cells(image)
    np.testing.assert_array_equal(image, before)


def test_label_image_matches_the_table():
    image = smear()
    labels = label_cells(image)
    cells = segment_cells(image)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert list(np.unique(labels)[1:]) == list(cells["label"]) == list(range(1, len(cells) + 1))
    first_pixels = [np.flatnonzero(labels == k)[0] for k in cells["label"]]
    assert first_pixels == sorted(first_pixels)  # raster order
    assert [np.count_nonzero(labels == k) for k in cells["label"]] == list(cells["area"])


def test_cells_at_the_edge():
    centres = [*CENTRES, (0, 100)]  # the last one is cut in half by the top edge
    image = smear(centres)
    cut = disk_boxes([(0, 100)], shape=image.shape)
    assert match_boxes(segment_cells(image), cut)[0] == 0  # cut by the edge: dropped by default
    assert match_boxes(segment_cells(image, min_border_area=0), cut)[0] == 1
    whole = smear([*CENTRES, (RADIUS - 1, 100)])  # touches the edge, barely cut
    assert len(segment_cells(whole)) == len(CENTRES) + 1
    assert len(segment_cells(whole, exclude_border=True)) == len(CENTRES)


def test_size_filters_and_given_diameter():
    image = smear()
    assert len(segment_cells(image, cell_diameter=2 * RADIUS)) == len(CENTRES)
    assert segment_cells(image, max_area=100).empty
    assert len(segment_cells(image, min_area=0, max_area=np.inf, min_solidity=0)) == len(CENTRES)


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros(10), {}, r"image must be \(M, N\) or \(M, N, C\)"),
        (np.zeros((0, 5)), {}, r"image must be .* with pixels"),
        (np.zeros((8, 8, 3)), {"channel": 3}, r"channel 3 out of range for an image with 3 channels"),
        (np.zeros((8, 8)), {"cell_diameter": 0}, r"cell_diameter must be > 0, got 0"),
    ],
)
def test_bad_input(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        segment_cells(image, **kwargs)


def test_box_iou():
    a = [[0, 0, 10, 10], [0, 0, 0, 0]]
    b = [[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]]
    np.testing.assert_allclose(box_iou(a, b), [[1, 1 / 3, 0], [0, 0, 0]])
    assert box_iou(np.empty((0, 4)), b).shape == (0, 3)
    with pytest.raises(ValueError, match=r"boxes must have shape \(K, 4\), got \(2, 3\)"):
        box_iou(np.zeros((2, 3)), b)


def test_match_boxes_is_one_to_one():
    true = [[0, 0, 10, 10], [0, 20, 10, 30]]
    pred = pd.DataFrame(
        {"min_row": [0, 1, 50], "min_col": [0, 0, 50], "max_row": [10, 10, 60], "max_col": [10, 10, 60]}
    )
    assert match_boxes(pred, true) == (1, 2, 1)  # two found boxes on one cell count once
    assert match_boxes(pred, true, iou=1.0) == (1, 2, 1)
    assert match_boxes([], true) == (0, 0, 2)
    assert match_boxes(pred, []) == (0, 3, 0)
    with pytest.raises(ValueError, match=r"iou must be in \(0, 1\], got 0"):
        match_boxes(pred, true, iou=0)


@pytest.mark.shared_data
def test_real_bbbc041_smears():
    root = SHARED_DATA / "bbbc041"
    if not root.is_dir():
        pytest.skip("../shared/data/bbbc041 not found")
    entries = json.loads((root / "training_subset.json").read_text())[:2]
    tp = fp = fn = 0
    for entry in entries:
        image = io.imread(root / entry["image"]["pathname"].lstrip("/"))
        true = [
            (b["minimum"]["r"], b["minimum"]["c"], b["maximum"]["r"], b["maximum"]["c"])
            for b in (o["bounding_box"] for o in entry["objects"])
        ]
        # BBBC041's annotators left out cells cut by the edge: so do we here.
        t, p, n = match_boxes(segment_cells(image, exclude_border=True), true)
        tp, fp, fn = tp + t, fp + p, fn + n
    # Measured: recall 176/187 = 0.94, precision 176/186 = 0.95 (docs/benchmarks.md).
    assert tp / (tp + fn) >= 0.88
    assert tp / (tp + fp) >= 0.88
