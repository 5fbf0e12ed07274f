"""Tests of the crop stage: centring, size, normalisation, alignment, QC and the store (the
counts on the real data sets are in test_shared_crop.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.readers import list_source_images
from infogan_cells.data.store import read_crop_store
from infogan_cells.preprocess import qc
from infogan_cells.preprocess.crop import OBS_COLUMNS, crop, merge_crops
from infogan_cells.preprocess.normalise import (
    GIEMSA_REFERENCE,
    background_level,
    lab_stats,
    normalise,
    reinhard,
)
from infogan_cells.preprocess.windows import align_cells, crop_cells

BACKGROUND = 220


def _two_disks(shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A bright RGB image with two dark disks, and their boxes (min_row, min_col, max_row, max_col)."""
    image = np.full((*shape, 3), BACKGROUND, np.uint8)
    boxes = []
    for (r, c), radius in (((40, 50), 15), ((80, 115), 20)):
        rr, cc = disk((r, c), radius, shape=shape)
        image[rr, cc] = (90, 40, 120)
        boxes.append((r - radius, c - radius, r + radius + 1, c + radius + 1))
    return image, np.array(boxes, np.float64)


def _smear_input(root: Path, n_images: int = 3, *, extra: dict | None = None) -> Path:
    """A BBBC041 JSON over small smears of dark disks; image k has k + 2 cells of growing size."""
    rng = np.random.default_rng(0)
    entries = []
    for k in range(n_images):
        image = np.full((100, 140, 3), BACKGROUND, np.uint8)
        objects = []
        for j in range(k + 2):
            radius = 9 + j
            r, c = 20 + 30 * (j % 3), 22 + 45 * (j // 3) + rng.integers(-2, 3)
            rr, cc = disk((r, c), radius, shape=image.shape[:2])
            image[rr, cc] = (80 + 20 * j, 50, 110)
            objects.append(
                {
                    "bounding_box": {
                        "minimum": {"r": int(r - radius), "c": int(c - radius)},
                        "maximum": {"r": int(r + radius + 1), "c": int(c + radius + 1)},
                    },
                    "category": "ring" if j == 1 else "red blood cell",
                }
            )
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"s{k}.png")
        entries.append({"image": {"pathname": f"/images/s{k}.png"}, "objects": objects})
    for name, objects in (extra or {}).items():
        entries.append({"image": {"pathname": name}, "objects": objects})
    path = root / "annotations.json"
    path.write_text(json.dumps(entries))
    return path


# --------------------------------------------------------------------------------------
# Image functions


@pytest.mark.parametrize("size", [32, 64, 128])
def test_crops_are_centred_on_their_boxes(size):
    image, boxes = _two_disks()

    crops = crop_cells(image, boxes, size=size, margin=0.25, background=[BACKGROUND] * 3)

    assert crops.shape == (2, size, size, 3) and crops.dtype == np.uint8
    for crop_ in crops:
        (props,) = regionprops((crop_[..., 0] < 155).astype(np.uint8))
        np.testing.assert_allclose(props.centroid, [(size - 1) / 2] * 2, atol=0.6 + size / 128)
        # the disk spans 1 / (1 + 2 * margin) of the window
        assert props.axis_major_length == pytest.approx(size / 1.5, rel=0.08)


def test_window_past_the_edge_is_padded_with_the_background():
    image, _ = _two_disks()
    box = np.array([[-10.0, -10.0, 20.0, 20.0]])  # a quarter of it inside the image

    crop_ = crop_cells(image[..., :1] * 0 + 50, box, size=30, margin=0, background=[200])[0, ..., 0]

    assert (crop_[:10, :] == 200).all() and (crop_[:, :10] == 200).all()
    assert (crop_[12:, 12:] == 50).all()


def test_sixteen_bit_channels_are_normalised_each_to_the_full_range():
    rng = np.random.default_rng(0)
    image = np.stack([rng.integers(1000, 3001, (50, 60)), rng.integers(0, 101, (50, 60))], axis=-1)
    image = image.astype(np.uint16)

    out = normalise(image, percentiles=(0, 100))

    assert out.dtype == np.uint8 and out.shape == image.shape
    for k in range(2):
        assert out[..., k].min() == 0 and out[..., k].max() == 255
    expected = np.round((image[..., 0].astype(float) - image[..., 0].min()) / np.ptp(image[..., 0]) * 255)
    np.testing.assert_allclose(out[..., 0], expected, atol=1)


def test_background_level_ignores_boxes_and_falls_back_to_the_border():
    image, boxes = _two_disks()
    image[:, :5] = 0  # a dark strip along one border

    assert background_level(image, boxes).tolist() == [BACKGROUND] * 3
    assert background_level(image, np.array([[0.0, 0.0, 120.0, 160.0]])).tolist() == [BACKGROUND] * 3


@pytest.mark.parametrize("rotation", [0.0, 0.5, -0.9, 1.3])
def test_align_turns_the_major_axis_horizontal(rotation):
    image = np.full((1, 64, 64, 3), BACKGROUND, np.uint8)
    rr, cc = ellipse(32, 32, 22, 8, rotation=rotation, shape=(64, 64))
    image[0, rr, cc] = 60
    mask = image[..., 0] < 100

    aligned, angles = align_cells(image, mask, [BACKGROUND] * 3)

    (props,) = regionprops((aligned[0, ..., 0] < 140).astype(np.uint8))
    assert abs(abs(props.orientation) - np.pi / 2) < 0.05  # major axis along the columns
    assert -90 < angles[0] <= 90
    assert aligned[0, 0, 0].tolist() == [BACKGROUND] * 3  # corners filled with the background


def test_reinhard_matches_the_reference_statistics():
    rng = np.random.default_rng(0)
    # a bluish smear-like image: 60% bright background, 40% darker cells, some noise
    cells = rng.random((80, 80)) < 0.4
    rgb = np.where(cells[..., None], [90, 100, 150], [200, 210, 230]) + rng.normal(0, 8, (80, 80, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)

    out = reinhard(rgb, lab_stats(rgb), GIEMSA_REFERENCE)

    np.testing.assert_allclose(lab_stats(out), GIEMSA_REFERENCE, atol=1.5)
    assert abs(lab_stats(rgb)[0, 2] - GIEMSA_REFERENCE[0, 2]) > 10  # it did move the colours


def test_qc_counts_one_two_and_no_cells():
    crops = np.full((3, 32, 32, 1), 200, np.uint8)
    rr, cc = disk((16, 16), 9)
    crops[0, rr, cc] = 40
    for centre in ((10, 9), (22, 23)):
        rr, cc = disk(centre, 6)
        crops[1, rr, cc] = 40
    distance = qc.foreground(crops, [200])
    regions = np.tile([[2, 2, 30, 30]], (3, 1))

    n_cells = qc.count_cells(qc.cell_masks(distance, qc.otsu_levels(distance)), regions)

    assert n_cells.tolist() == [1, 2, 0]


# --------------------------------------------------------------------------------------
# The stage


def test_crop_round_trip_through_the_store(tmp_path):
    path = _smear_input(tmp_path / "in")
    out = tmp_path / "out" / "crops.h5"

    summary = crop(path, out, InputConfig(path=str(path)), CropConfig(size=32), config_text="crop: {}\n")

    stored = read_crop_store(out)
    assert summary == stored.summary
    assert summary["n_boxes"] == 2 + 3 + 4 and summary["n_crops"] == 9 and summary["skipped"] == {}
    assert stored.images.shape == (9, 32, 32, 3) and stored.channel_names == ["R", "G", "B"]
    assert list(stored.obs.columns) == list(OBS_COLUMNS)
    assert stored.obs["source_image"].tolist()[:2] == ["images/s0.png"] * 2
    assert stored.obs["label"].tolist()[:3] == ["red blood cell", "ring", "red blood cell"]
    assert stored.obs["qc_pass"].all() and (stored.obs["qc_n_cells"] == 1).all()
    assert stored.config == "crop: {}\n"
    table = pd.read_csv(out.with_suffix(".csv"), index_col="crop_index", keep_default_na=False)
    assert table["label"].tolist() == stored.obs["label"].tolist()
    montages = sorted(p.name for p in out.parent.glob("*.png"))
    assert montages == [
        "crops_montage_red_blood_cell.png",
        "crops_montage_rejected.png",
        "crops_montage_ring.png",
    ]
    # the same crops as normalising the image and cutting it directly (the stage normalises 8-bit
    # crops after resizing them, with the image's lookup table: rounding differs by < one step)
    image = normalise(np.asarray(Image.open(tmp_path / "in" / "images" / "s0.png")))
    boxes = stored.obs.loc[
        stored.obs["source_image"] == "images/s0.png", ["min_row", "min_col", "max_row", "max_col"]
    ].to_numpy(float)
    direct = crop_cells(image, boxes, size=32, background=image[0, 0])
    np.testing.assert_allclose(stored.images[:2], direct, atol=2)
    assert np.abs(stored.images[:2].astype(int) - direct).mean() < 0.15


def test_per_image_jobs_then_merge_equal_one_job(tmp_path):
    path = _smear_input(tmp_path / "in", n_images=3)
    cfg = CropConfig(size=32, qc_size_ratio=1.4)  # tight enough that the size check rejects some
    whole = crop(path, tmp_path / "whole.h5", InputConfig(), cfg)
    parts = []
    for k, name in enumerate(list_source_images(path)):
        parts.append(tmp_path / "parts" / f"part{k}.h5")
        summary = crop(path, parts[-1], InputConfig(), cfg, images=[name], montages=False)
        assert summary["size_qc"] == "deferred" and summary["qc_failed"] == {}

    merged = merge_crops(parts, tmp_path / "merged.h5", cfg, montage_dir=tmp_path / "montages")

    a, b = read_crop_store(tmp_path / "whole.h5"), read_crop_store(tmp_path / "merged.h5")
    assert whole["qc_failed"].get("size", 0) > 0
    np.testing.assert_array_equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key in ("n_sources", "n_boxes", "n_crops", "skipped", "qc_failed", "qc_dropped", "n_qc_dropped"):
        assert merged[key] == whole[key], key
    assert not list((tmp_path / "parts").glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "montages").iterdir()) == [
        "merged_montage_red_blood_cell.png",
        "merged_montage_rejected.png",
        "merged_montage_ring.png",
    ]


def test_keep_failed_keeps_flagged_crops(tmp_path):
    path = _smear_input(tmp_path / "in", n_images=2)
    cfg = CropConfig(size=32, qc_size_ratio=1.2, keep_failed=True)

    summary = crop(path, tmp_path / "c.h5", InputConfig(), cfg)

    obs = read_crop_store(tmp_path / "c.h5").obs
    assert summary["n_crops"] == summary["n_boxes"] == 5 and summary["n_qc_dropped"] == 0
    failing = obs[~obs["qc_pass"]]
    assert len(failing) == summary["n_qc_failed"] > 0
    assert failing["qc_reason"].str.contains("size").all()
    too_far = (obs["qc_size_ratio"] > 1.2) | (obs["qc_size_ratio"] < 1 / 1.2)
    assert too_far.tolist() == (~obs["qc_pass"]).tolist()


def test_edge_box_is_clipped_flagged_and_kept(tmp_path):
    image, _ = _two_disks()
    Image.fromarray(image).save(tmp_path / "e.png")
    path = tmp_path / "b.csv"
    path.write_text(
        "image,min_row,min_col,max_row,max_col,label\n"
        "e.png,25,35,56,66,in\n"  # the first disk
        "e.png,-4,100,26,130,edge\n"  # 4 of its 30 rows above the image
        "e.png,-25,-25,5,5,corner\n"
    )  # a ninth inside

    summary = crop(
        path, tmp_path / "c.h5", InputConfig(), CropConfig(size=32, qc_cell_count=False, keep_failed=True)
    )

    obs = read_crop_store(tmp_path / "c.h5").obs.set_index("label")
    assert obs["qc_clipped"].to_dict() == {"in": False, "edge": True, "corner": True}
    assert obs.loc["edge", "qc_pass"] and obs.loc["edge", "qc_inside"] == pytest.approx(26 / 30)
    assert obs.loc["corner", "qc_reason"] == "clipped"
    assert summary["n_clipped"] == 2


def test_mask_background_blanks_everything_but_the_cell():
    image, boxes = _two_disks()
    image[5:8, 5:8] = 0  # debris in the margin of the first crop
    from infogan_cells.preprocess.windows import mask_background

    crops = crop_cells(image, boxes[:1], size=32, margin=0.5, background=[BACKGROUND] * 3)
    masked = mask_background(crops, np.array([BACKGROUND] * 3, np.uint8))

    assert (masked[0, 0:3, 0:3] == BACKGROUND).all()
    assert (masked[0, 16, 16] == crops[0, 16, 16]).all()


def test_workers_give_the_same_store(tmp_path):
    path = _smear_input(tmp_path / "in", n_images=2)
    crop(path, tmp_path / "one.h5", InputConfig(), CropConfig(size=32))
    crop(path, tmp_path / "two.h5", InputConfig(), CropConfig(size=32, workers=2))

    a, b = read_crop_store(tmp_path / "one.h5"), read_crop_store(tmp_path / "two.h5")
    np.testing.assert_array_equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.obs, b.obs)


def test_sixteen_bit_tiff_cells_keep_every_channel(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    for k, label in enumerate(["G1", "G1", "M"]):
        cell = rng.integers(100, 200, (3, 24, 20)).astype(np.uint16)  # (C, Y, X)
        rr, cc = disk((12, 10), 6)
        cell[:, rr, cc] += np.array([1000, 30000, 5000], np.uint16)[:, None]
        (tmp_path / "in" / label).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(
            tmp_path / "in" / label / f"c{k}.tif", cell, photometric="minisblack", metadata={"axes": "CYX"}
        )

    summary = crop(tmp_path / "in", tmp_path / "c.h5", InputConfig(), CropConfig(size=32))

    stored = read_crop_store(tmp_path / "c.h5")
    assert summary["format"] == "tiff" and summary["n_crops"] == 3
    assert stored.images.shape == (3, 32, 32, 3) and stored.channel_names == ["R", "G", "B"]
    assert stored.obs["label"].tolist() == ["G1", "G1", "M"]
    for k in range(3):  # every channel normalised on its own: the bright disk near 255, the rest near 0
        assert stored.images[0, 16, 16, k] > 200 and stored.images[0, 2, 2, k] < 60


def test_idx_digits_crop_to_one_grey_channel(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    for k in range(4):
        rr, cc = disk((14, 14), 5 + k)
        images[k, rr, cc] = 255
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array(images.shape, ">i4").tobytes() + images.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + np.array([4], ">i4").tobytes() + bytes([7, 1, 7, 0])
    )

    summary = crop(path, tmp_path / "c.h5", InputConfig(), CropConfig(size=32))

    stored = read_crop_store(tmp_path / "c.h5")
    assert summary["n_crops"] == 4 and stored.images.shape == (4, 32, 32, 1)
    assert stored.channel_names == ["gray"] and stored.obs["label"].tolist() == ["7", "1", "7", "0"]
    assert (stored.obs["qc_n_cells"] == 1).all()
    assert sorted(p.name for p in tmp_path.glob("c_montage_*.png")) == [
        "c_montage_0.png",
        "c_montage_1.png",
        "c_montage_7.png",
        "c_montage_rejected.png",
    ]


def test_segmented_whole_images(tmp_path, monkeypatch):
    import sys
    import types

    image, boxes = _two_disks()
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "smear.png")
    fake = types.ModuleType("infogan_cells.preprocess.segment")
    fake.segment_cells = lambda array: pd.DataFrame(
        boxes, columns=["min_row", "min_col", "max_row", "max_col"]
    )
    monkeypatch.setitem(sys.modules, "infogan_cells.preprocess.segment", fake)

    summary = crop(tmp_path / "in", tmp_path / "c.h5", InputConfig(segment=True), CropConfig(size=32))

    obs = read_crop_store(tmp_path / "c.h5").obs
    assert summary["n_boxes"] == summary["n_crops"] == 2
    assert obs[["min_row", "min_col", "max_row", "max_col"]].to_numpy().tolist() == boxes.tolist()
    assert obs["label"].tolist() == ["", ""] and obs["source_image"].tolist() == ["smear.png"] * 2


def test_cli_crop_and_merge(tmp_path, capsys):
    from infogan_cells.cli import main

    path = _smear_input(tmp_path / "in", n_images=2)
    names = list_source_images(path)
    assert main(["list-images", "--input", str(path)]) == 0
    assert capsys.readouterr().out.split() == names
    for k, name in enumerate(names):
        assert (
            main(
                [
                    "crop",
                    "--input",
                    str(path),
                    "--images",
                    name,
                    "--size",
                    "32",
                    "--out",
                    str(tmp_path / f"p{k}.h5"),
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "merge-crops",
                str(tmp_path / "p0.h5"),
                str(tmp_path / "p1.h5"),
                "--set",
                "crop.size=32",
                "--out",
                str(tmp_path / "all.h5"),
            ]
        )
        == 0
    )

    stored = read_crop_store(tmp_path / "all.h5")
    assert len(stored) == 5 and stored.summary["size_qc"] == "applied"
