"""Tests of the readers: every input format into one representation (sources + a box table)."""

from __future__ import annotations

import gzip
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from infogan_cells.data.cells import BOX_TABLE_COLUMNS
from infogan_cells.data.images import load_tiff
from infogan_cells.data.readers import detect_format, list_source_images, read_cells


def _png(path: Path, shape=(40, 50, 3), value=200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _entry(pathname: str, boxes: list[tuple[int, int, int, int, str]]) -> dict:
    return {
        "image": {"pathname": pathname, "shape": {"r": 40, "c": 50, "channels": 3}},
        "objects": [
            {"bounding_box": {"minimum": {"r": r0, "c": c0}, "maximum": {"r": r1, "c": c1}}, "category": cat}
            for r0, c0, r1, c1, cat in boxes
        ],
    }


def _write_idx(path: Path, array: np.ndarray) -> Path:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    data = header + array.tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------
# Box formats


def test_bbbc041_paths_boxes_and_categories(tmp_path):
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.png")
    entries = [
        _entry("/images/a.png", [(1, 2, 11, 12, "red blood cell"), (5, 5, 20, 25, "ring")]),
        _entry("/b.png", [(0, 0, 10, 10, "trophozoite")]),
    ]  # found in the images/ sibling
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(entries))

    cells = read_cells(path)

    assert cells.format == "bbbc041"
    assert [s.name for s in cells.sources] == ["images/a.png", "b.png"]
    assert cells.sources[1].path == tmp_path / "images" / "b.png"
    assert list(cells.boxes.columns) == list(BOX_TABLE_COLUMNS)
    assert cells.boxes["label"].tolist() == ["red blood cell", "ring", "trophozoite"]
    assert cells.boxes[["source", "source_index"]].to_numpy().tolist() == [[0, 0], [0, 1], [1, 0]]
    assert cells.boxes.iloc[1][["min_row", "min_col", "max_row", "max_col"]].tolist() == [5, 5, 20, 25]
    assert cells.sources[0].load().shape == (40, 50, 3)
    assert list_source_images(path) == ["images/a.png", "b.png"]
    assert list_source_images(path, "bbbc041") == ["images/a.png", "b.png"]


def test_read_cells_keeps_only_the_named_images(tmp_path):
    entries = [_entry(f"/images/{n}.png", [(0, 0, 5, 5, n)] * (k + 1)) for k, n in enumerate("abc")]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(entries))

    cells = read_cells(path, images=["images/c.png", "images/a.png"])

    assert [s.name for s in cells.sources] == ["images/a.png", "images/c.png"]
    assert cells.boxes.groupby("source")["label"].agg(list).to_dict() == {0: ["a"], 1: ["c", "c", "c"]}


def test_csv_boxes_relative_to_the_csv(tmp_path):
    _png(tmp_path / "imgs" / "x.png")
    path = tmp_path / "boxes.csv"
    path.write_text(
        "image,min_row,min_col,max_row,max_col,label\n"
        "imgs/x.png,1,2,11,12,A\nimgs/x.png,3,4,13,14,\nimgs/y.png,0,0,5,5,B\n"
    )

    cells = read_cells(path)

    assert detect_format(path) == "csv"
    assert [s.name for s in cells.sources] == ["imgs/x.png", "imgs/y.png"]
    assert cells.boxes["label"].tolist() == ["A", "", "B"]
    assert cells.boxes["source_index"].tolist() == [0, 1, 0]
    assert list_source_images(path) == ["imgs/x.png", "imgs/y.png"]


# --------------------------------------------------------------------------------------
# Single-cell formats


def test_folder_labels_from_class_subfolders(tmp_path):
    _png(tmp_path / "Parasitized" / "p1.png")
    _png(tmp_path / "Uninfected" / "u1.jpg")
    _png(tmp_path / "loose.png", shape=(30, 30))
    (tmp_path / "labels.csv").write_text("file,label\n")  # not an image: ignored

    cells = read_cells(tmp_path)

    assert cells.format == "folder"
    assert [s.name for s in cells.sources] == ["Parasitized/p1.png", "Uninfected/u1.jpg", "loose.png"]
    assert cells.boxes["label"].tolist() == ["Parasitized", "Uninfected", ""]
    assert cells.boxes["min_row"].isna().all()  # the whole image
    assert cells.sources[2].load().shape == (30, 30, 1)
    assert list_source_images(tmp_path) == []  # single cells: one crop job
    assert list_source_images(tmp_path, segment=True) == [
        "Parasitized/p1.png",
        "Uninfected/u1.jpg",
        "loose.png",
    ]


@pytest.mark.parametrize("layout", ["CYX", "YXC"])
def test_tiff_channel_axis_and_16_bit(tmp_path, layout):
    cyx = np.arange(3 * 20 * 24, dtype=np.uint16).reshape(3, 20, 24) * 30
    data = cyx if layout == "CYX" else np.moveaxis(cyx, 0, -1)
    path = tmp_path / "G1" / "cell.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": layout})

    image = load_tiff(path)

    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, np.moveaxis(cyx, 0, -1))
    assert detect_format(tmp_path) == "tiff"
    assert read_cells(tmp_path).boxes["label"].tolist() == ["G1"]


def test_tiff_without_metadata_takes_the_short_axis_as_channels(tmp_path):
    cyx = np.random.default_rng(0).integers(0, 4000, (2, 16, 18), dtype=np.uint16)
    path = tmp_path / "cell.tif"
    tifffile.imwrite(path, cyx, photometric="minisblack", metadata=None)

    np.testing.assert_array_equal(load_tiff(path), np.moveaxis(cyx, 0, -1))


def test_npz_labels_from_class_names(tmp_path):
    images = np.arange(4 * 2 * 5 * 6, dtype=np.uint16).reshape(4, 2, 5, 6)
    path = tmp_path / "cells.npz"
    np.savez(
        path,
        images=images,
        labels=np.array([1, 0, 1, 2]),
        class_names=np.array(["G1", "S", "G2"]),
        channel_names=np.array(["bf", "dna"]),
    )

    cells = read_cells(path)

    assert detect_format(path) == "npz"
    assert cells.boxes["label"].tolist() == ["S", "G1", "S", "G2"]
    assert cells.boxes["source_index"].tolist() == [0, 1, 2, 3]
    assert cells.channel_names == ["bf", "dna"]
    stack = cells.sources[0].load()
    assert stack.shape == (4, 5, 6, 2) and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack[2, :, :, 1], images[2, 1])
    assert list_source_images(path) == []


def test_npz_string_labels_and_no_labels(tmp_path):
    np.savez(tmp_path / "s.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array(["a", "b"]))
    np.savez(tmp_path / "n.npz", images=np.zeros((2, 1, 4, 4), np.int32))

    assert read_cells(tmp_path / "s.npz").boxes["label"].tolist() == ["a", "b"]
    assert read_cells(tmp_path / "n.npz").boxes["label"].tolist() == ["", ""]
    assert read_cells(tmp_path / "s.npz").sources[0].load().shape == (2, 4, 4, 1)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_with_labels_beside(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, (5, 7, 6), dtype=np.uint8)
    path = _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([3, 1, 4, 1, 5], np.uint8))

    cells = read_cells(path)

    assert detect_format(path) == "idx"
    assert cells.boxes["label"].tolist() == ["3", "1", "4", "1", "5"]
    stack = cells.sources[0].load()
    assert stack.shape == (5, 7, 6, 1)
    np.testing.assert_array_equal(stack[..., 0], images)
    assert cells.boxes.iloc[0][["min_row", "min_col", "max_row", "max_col"]].tolist() == [0, 0, 7, 6]


def test_idx_without_labels_file_is_unlabelled(tmp_path):
    path = _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    assert read_cells(path).boxes["label"].tolist() == ["", ""]


def test_segment_gives_boxes_from_segment_cells(tmp_path, monkeypatch):
    _png(tmp_path / "smear.png", shape=(30, 40, 3))
    fake = types.ModuleType("infogan_cells.preprocess.segment")
    fake.segment_cells = lambda image: pd.DataFrame(
        {
            "label": [1, 2],
            "min_row": [1, 5],
            "min_col": [2, 6],
            "max_row": [9, 20],
            "max_col": [10, 30],
            "area": [50, 100],
        }
    )
    monkeypatch.setitem(sys.modules, "infogan_cells.preprocess.segment", fake)

    cells = read_cells(tmp_path / "smear.png", segment=True)
    boxes = cells.boxes_of(0, cells.sources[0].load())

    assert cells.segment and len(cells.boxes) == 0
    assert boxes[["min_row", "min_col", "max_row", "max_col"]].to_numpy().tolist() == [
        [1, 2, 9, 10],
        [5, 6, 20, 30],
    ]
    assert boxes["label"].tolist() == ["", ""]


# --------------------------------------------------------------------------------------
# The real data in ../shared/data


@pytest.mark.shared_data
def test_real_inputs_read(shared_data):
    bbbc = read_cells(shared_data / "bbbc041" / "training_subset.json")
    assert len(bbbc.sources) == 6 and len(bbbc.boxes) == 560
    assert bbbc.boxes["label"].value_counts().to_dict() == {
        "red blood cell": 544,
        "trophozoite": 12,
        "ring": 3,
        "gametocyte": 1,
    }
    assert all(s.path.exists() for s in bbbc.sources)

    iml = read_cells(shared_data / "iml_malaria" / "annotations_bbbc041_format.json")
    assert len(iml.sources) == 80 and len(iml.boxes) == 8909

    nih = read_cells(shared_data / "nih_malaria_cell_images")
    assert nih.format == "folder" and len(nih.sources) == 400
    assert nih.boxes["label"].value_counts().to_dict() == {"Parasitized": 200, "Uninfected": 200}

    ifc = read_cells(shared_data / "jurkat_ifc_cellcycle" / "cells.npz")
    assert len(ifc.boxes) == 1709 and ifc.boxes["label"].nunique() == 7
    assert ifc.channel_names == ["Ch3_brightfield", "Ch4_DNA_stain", "Ch6_darkfield"]
