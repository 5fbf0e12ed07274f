"""Bad input: each problem is an InputError naming the file and what is wrong, or a skip that
is counted in the summary and reported in the log."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from infogan_cells.cli import main
from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.readers import list_source_images, read_cells
from infogan_cells.data.store import read_crop_store
from infogan_cells.errors import InputError
from infogan_cells.preprocess.crop import crop

CFG = CropConfig(size=16)


def _image(path: Path, shape=(60, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*shape, 3), 220, np.uint8)
    image[10:30, 10:30] = 60
    image[35:55, 45:65] = 70
    Image.fromarray(image).save(path)
    return path


def _bbbc041(root: Path, entries: list[tuple[str, list[tuple]]]) -> Path:
    """A BBBC041 JSON of (pathname, [(min_r, min_c, max_r, max_c), ...]) entries."""

    def obj(b: tuple) -> dict:
        return {
            "bounding_box": {"minimum": {"r": b[0], "c": b[1]}, "maximum": {"r": b[2], "c": b[3]}},
            "category": "red blood cell",
        }

    data = [{"image": {"pathname": name}, "objects": [obj(b) for b in boxes]} for name, boxes in entries]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


GOOD = [(10, 10, 30, 30), (35, 45, 55, 65)]


def _crop_and_check(
    path: Path, tmp_path: Path, caplog, reason: str, n_skipped: int, n_crops: int, words: str
) -> dict:
    with caplog.at_level(logging.WARNING, logger="infogan_cells"):
        summary = crop(path, tmp_path / "out" / "crops.h5", InputConfig(), CFG)
    assert summary["skipped"] == {reason: n_skipped}
    assert summary["n_crops"] == n_crops == len(read_crop_store(tmp_path / "out" / "crops.h5"))
    assert summary["n_crops"] == summary["n_boxes"] - n_skipped - summary["n_qc_dropped"]
    assert words in caplog.text and f"skipped ({reason})" in caplog.text
    return summary


# --------------------------------------------------------------------------------------
# Counted skips


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_unreadable_image_is_a_counted_skip(tmp_path, caplog, damage):
    _image(tmp_path / "images" / "good.png")
    bad = _image(tmp_path / "images" / "bad.png")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x89PNG\r\n\x1a\n" + bytes(200))
    path = _bbbc041(tmp_path, [("/images/good.png", GOOD), ("/images/bad.png", GOOD)])

    summary = _crop_and_check(path, tmp_path, caplog, "unreadable_image", 2, 2, "bad.png")

    assert summary["skipped_images"] == {"unreadable_image": 1} and summary["n_images_read"] == 1


def test_missing_image_is_a_counted_skip(tmp_path, caplog):
    _image(tmp_path / "images" / "good.png")
    path = _bbbc041(tmp_path, [("/images/good.png", GOOD), ("/images/gone.png", GOOD + GOOD)])

    summary = _crop_and_check(path, tmp_path, caplog, "missing_image", 4, 2, "gone.png")

    assert summary["skipped_images"] == {"missing_image": 1}


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((30, 10, 10, 30), "bad_box"),  # min_row > max_row
        ((10, 10, 10, 30), "empty_box"),  # zero height
        ((100, 200, 130, 230), "outside_image"),
    ],
)
def test_bad_boxes_are_counted_skips(tmp_path, caplog, box, reason):
    _image(tmp_path / "images" / "a.png")
    path = _bbbc041(tmp_path, [("/images/a.png", [*GOOD, box])])

    _crop_and_check(path, tmp_path, caplog, reason, 1, 2, "images/a.png: box 2")


def test_unreadable_json_box_is_a_counted_skip(tmp_path, caplog):
    _image(tmp_path / "images" / "a.png")
    path = _bbbc041(tmp_path, [("/images/a.png", [*GOOD, ("x", 1, 2, 3)])])

    _crop_and_check(path, tmp_path, caplog, "bad_box", 1, 2, "object 2")


def test_unreadable_csv_row_is_a_counted_skip_naming_the_line(tmp_path, caplog):
    _image(tmp_path / "a.png")
    path = tmp_path / "boxes.csv"
    path.write_text(
        "image,min_row,min_col,max_row,max_col,label\n"
        "a.png,10,10,30,30,x\n"
        "a.png,ten,10,30,30,x\n"  # line 3
        "a.png,35,45,55,65,x\n"
        "a.png,1,2\n"
    )  # line 5: too short

    summary = _crop_and_check(path, tmp_path, caplog, "bad_row", 2, 2, "line 3")

    assert "line 5" in caplog.text and summary["n_boxes"] == 4


def test_skips_with_no_image_are_counted_once_over_per_image_jobs(tmp_path):
    for name in ("a.png", "b.png"):
        _image(tmp_path / name)
    path = tmp_path / "boxes.csv"
    path.write_text("image,min_row,min_col,max_row,max_col\na.png,10,10,30,30\n,1,2,3,4\nb.png,10,10,30,30\n")

    counts = [
        crop(path, tmp_path / f"{n}.h5", InputConfig(), CFG, images=[n])["skipped"]
        for n in list_source_images(path)
    ]

    assert counts == [{"bad_row": 1}, {}]


# --------------------------------------------------------------------------------------
# Errors


def test_unknown_format_is_an_error(tmp_path):
    path = tmp_path / "cells.xyz"
    path.write_text("?")
    with pytest.raises(InputError, match=r"cells\.xyz: cannot tell the input format"):
        read_cells(path)
    with pytest.raises(InputError, match=r"cells\.xyz: unknown input format 'hdf5'"):
        read_cells(path, "hdf5")


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"nothing\.json: input not found"):
        read_cells(tmp_path / "nothing.json")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"empty: no images \(.*\) found in the folder"):
        read_cells(tmp_path / "empty")


def test_npz_arrays_of_mismatched_length_are_an_error(tmp_path):
    path = tmp_path / "cells.npz"
    np.savez(path, images=np.zeros((4, 2, 8, 8), np.uint16), labels=np.arange(3))
    with pytest.raises(InputError, match=r"cells\.npz: 'labels' has 3 entries for 4 images"):
        read_cells(path)


def test_npz_without_images_or_not_a_zip_is_an_error(tmp_path):
    np.savez(tmp_path / "a.npz", pictures=np.zeros((2, 4, 4)))
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"a\.npz: NPZ has no 'images' array \(found: pictures\)"):
        read_cells(tmp_path / "a.npz")
    with pytest.raises(InputError, match=r"b\.npz: not a readable NPZ file"):
        read_cells(tmp_path / "b.npz")


def test_pathname_escaping_the_data_root_is_an_error(tmp_path):
    path = _bbbc041(tmp_path / "data", [("../../x.png", GOOD)])
    with pytest.raises(InputError, match=r"ann\.json: image path '\.\./\.\./x\.png' escapes the data root"):
        read_cells(path)
    with pytest.raises(InputError, match="escapes the data root"):
        list_source_images(path)


def test_csv_without_box_columns_is_an_error(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("file,x,y\na.png,1,2\n")
    with pytest.raises(InputError, match=r"boxes\.csv: CSV lacks the columns image, min_row"):
        read_cells(path)


def test_invalid_json_is_an_error(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('[{"image": ')
    with pytest.raises(InputError, match=r"ann\.json: not valid JSON"):
        read_cells(path)
    path.write_text('{"image": {}}')
    with pytest.raises(InputError, match=r"ann\.json: expected a BBBC041 JSON list"):
        read_cells(path)


def test_annotations_naming_no_images_are_an_error(tmp_path):
    (tmp_path / "ann.json").write_text("[]")
    (tmp_path / "boxes.csv").write_text("image,min_row,min_col,max_row,max_col\n,1,2,3,4\n")
    with pytest.raises(InputError, match=r"ann\.json: names no images"):
        read_cells(tmp_path / "ann.json")
    with pytest.raises(InputError, match=r"boxes\.csv: names no images \(1 unreadable rows or boxes\)"):
        read_cells(tmp_path / "boxes.csv")


def test_images_with_different_channel_counts_are_an_error(tmp_path):
    for name, shape in (("a.png", (20, 20, 3)), ("b.png", (20, 20, 3)), ("c.png", (20, 20))):
        (tmp_path / "cells").mkdir(exist_ok=True)
        Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / "cells" / name)
    with pytest.raises(InputError, match=r"c\.png: has 1 channel\(s\) where the other images have 3"):
        crop(tmp_path / "cells", tmp_path / "c.h5", InputConfig(), CFG)


def test_truncated_idx_is_an_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([10, 28, 28], ">i4").tobytes() + bytes(100))
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte: IDX file truncated"):
        read_cells(path)


def test_unknown_image_name_is_an_error(tmp_path):
    path = _bbbc041(tmp_path, [("/images/a.png", GOOD)])
    with pytest.raises(InputError, match=r"ann\.json: no source image named 'images/b\.png'"):
        read_cells(path, images=["images/b.png"])


def test_stain_normalisation_of_grey_images_is_an_error(tmp_path):
    (tmp_path / "cells").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "cells" / "a.png")
    with pytest.raises(InputError, match=r"a\.png: crop\.stain=reinhard needs RGB images"):
        crop(tmp_path / "cells", tmp_path / "c.h5", InputConfig(), CropConfig(stain="reinhard"))


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = _bbbc041(tmp_path / "data", [("../../x.png", GOOD)])

    status = main(["crop", "--input", str(path), "--out", str(tmp_path / "c.h5")])

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert status == 2
    assert lines == [
        f"infogan-cells crop: error: {path}: image path '../../x.png' escapes the data root "
        f"{tmp_path / 'data'}"
    ]
    assert "Traceback" not in err
    assert not (tmp_path / "c.h5").exists()


# --------------------------------------------------------------------------------------
# The malformed-input corpus through the command line: each case exits non-zero with one line
# naming the file and the problem, no traceback and no output that looks complete; or, where
# some images are readable, a counted skip.


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infogan_cells", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _refused(res: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """The one error line of a refused command, checked for ``words``."""
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"infogan-cells {command}: error: "), res.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _nothing_written(folder: Path) -> None:
    assert not folder.exists() or list(folder.iterdir()) == []


def _png_header_only(path: Path, rows: int, cols: int) -> Path:
    """A PNG whose header claims ``rows`` x ``cols`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(100)))
        + chunk(b"IEND", b"")
    )
    return path


def test_cli_bbbc041_entry_without_objects(tmp_path):
    _image(tmp_path / "images" / "a.png")
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"image": {"pathname": "/images/a.png"}}]))

    res = _cli("crop", "--input", str(path), "--out", str(tmp_path / "out" / "c.h5"))

    _refused(res, "crop", str(path), "no crops from 1 image(s): no boxes in any image")
    assert "entry 0 (images/a.png) has no 'objects' list" in res.stderr
    _nothing_written(tmp_path / "out")


def test_cli_entry_without_objects_beside_good_ones_is_no_error(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    path = _bbbc041(tmp_path, [("/images/a.png", GOOD)])
    path.write_text(json.dumps([*json.loads(path.read_text()), {"image": {"pathname": "/images/b.png"}}]))

    res = _cli("crop", "--input", str(path), "--out", str(tmp_path / "c.h5"))

    assert res.returncode == 0, res.stderr[-3000:]
    assert "entry 1 (images/b.png) has no 'objects' list" in res.stderr
    assert len(read_crop_store(tmp_path / "c.h5")) == 2


def test_cli_decompression_bomb(tmp_path):
    _png_header_only(tmp_path / "images" / "big.png", 200_000, 200_000)
    path = _bbbc041(tmp_path, [("/images/big.png", GOOD)])

    res = _cli("crop", "--input", str(path), "--out", str(tmp_path / "out" / "c.h5"))

    _refused(res, "crop", str(path), "big.png: image too large to decode", "2 image_too_large")
    _nothing_written(tmp_path / "out")


def test_decompression_bomb_beside_a_good_image_is_a_counted_skip(tmp_path, caplog):
    _image(tmp_path / "images" / "good.png")
    _png_header_only(tmp_path / "images" / "big.png", 200_000, 200_000)
    path = _bbbc041(tmp_path, [("/images/good.png", GOOD), ("/images/big.png", GOOD)])

    summary = _crop_and_check(path, tmp_path, caplog, "image_too_large", 2, 2, "big.png: image too large")

    assert summary["skipped_images"] == {"image_too_large": 1}


@pytest.mark.parametrize("content", [b"II*\x00" + bytes(60), b"", b"MM\x00*\x00\x00\x00\x08\x00\x05"])
def test_cli_corrupt_tiff_in_a_tiff_folder_is_a_counted_skip(tmp_path, content):
    folder = tmp_path / "cells"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        cell = np.zeros((2, 24, 24), np.uint16)
        cell[:, 6:18, 6:18] = rng.integers(2000, 3000, (2, 12, 12))
        tifffile.imwrite(folder / f"c{k}.tif", cell)
    (folder / "bad.tif").write_bytes(content)

    res = _cli("crop", "--input", str(folder), "--size", "16", "--out", str(tmp_path / "c.h5"))

    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "bad.tif" in res.stderr and "skipped (unreadable_image)" in res.stderr
    summary = read_crop_store(tmp_path / "c.h5").summary
    assert summary["skipped_images"] == {"unreadable_image": 1}
    assert summary["n_images_read"] == 3 and summary["n_boxes"] == 4


def test_cli_corrupt_tiffs_only(tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    (folder / "bad.tif").write_bytes(b"II*\x00" + bytes(60))

    res = _cli("crop", "--input", str(folder), "--out", str(tmp_path / "out" / "c.h5"))

    _refused(res, "crop", "bad.tif", "unreadable")
    _nothing_written(tmp_path / "out")


def test_cli_float_npz_with_nan_skips_those_cells(tmp_path):
    rng = np.random.default_rng(0)
    images = np.zeros((6, 1, 24, 24), np.float32)
    images[:, :, 6:18, 6:18] = rng.uniform(0.5, 1.0, (6, 1, 12, 12))
    images[2, 0, 3, 3] = np.nan
    images[4, 0, 10, 10] = np.inf
    np.savez(tmp_path / "cells.npz", images=images)

    res = _cli(
        "crop", "--input", str(tmp_path / "cells.npz"), "--size", "16", "--out", str(tmp_path / "c.h5")
    )

    assert res.returncode == 0, res.stderr[-3000:]
    assert "cells.npz: cell 2, 4 holds NaN or infinite values, skipped (non_finite)" in res.stderr
    stored = read_crop_store(tmp_path / "c.h5")
    assert stored.summary["skipped"] == {"non_finite": 2}
    assert sorted(stored.obs["source_index"]) == [0, 1, 3, 5]
    # the limits come from the finite cells: the cells' brightest pixels still reach 255
    assert stored.images.max() == 255


def test_cli_float_npz_all_nan(tmp_path):
    np.savez(tmp_path / "cells.npz", images=np.full((3, 8, 8), np.nan, np.float32))

    res = _cli("crop", "--input", str(tmp_path / "cells.npz"), "--out", str(tmp_path / "out" / "c.h5"))

    _refused(res, "crop", "cells.npz", "3 non_finite")
    _nothing_written(tmp_path / "out")


def test_float_image_with_nan_is_a_counted_skip(tmp_path, caplog):
    folder = tmp_path / "cells"
    folder.mkdir()
    for name in ("a", "b"):
        cell = np.zeros((24, 24), np.float32)
        cell[6:18, 6:18] = 0.8
        if name == "b":
            cell[0, 0] = np.nan
        tifffile.imwrite(folder / f"{name}.tif", cell)
    with caplog.at_level(logging.WARNING, logger="infogan_cells"):
        summary = crop(folder, tmp_path / "c.h5", InputConfig(), CFG)
    assert summary["skipped"] == {"non_finite": 1} and summary["n_images_read"] == 1
    assert "b.tif: image holds NaN or infinite values" in caplog.text


@pytest.mark.parametrize("damage", ["missing", "zero bytes", "truncated", "not an image"])
def test_cli_only_image_unreadable_fails_naming_it(tmp_path, damage):
    image = tmp_path / "images" / "a.png"
    if damage != "missing":
        _image(image)
    if damage == "zero bytes":
        image.write_bytes(b"")
    elif damage == "truncated":
        image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    elif damage == "not an image":
        image.write_text("hello, not an image\n")
    path = _bbbc041(tmp_path, [("/images/a.png", GOOD)])

    res = _cli("crop", "--input", str(path), "--out", str(tmp_path / "out" / "c.h5"))

    reason = "missing_image" if damage == "missing" else "unreadable_image"
    _refused(res, "crop", str(path), "no crops from 1 image(s)", str(image), f"2 {reason}")
    _nothing_written(tmp_path / "out")


def test_per_image_jobs_may_be_empty_but_their_gather_may_not(tmp_path):
    _image(tmp_path / "images" / "a.png").write_text("not an image")
    path = _bbbc041(tmp_path, [("/images/a.png", GOOD), ("/images/gone.png", GOOD)])
    parts = []
    for k, name in enumerate(list_source_images(path)):
        res = _cli("crop", "--input", str(path), "--images", name, "--out", str(tmp_path / f"p{k}.h5"))
        assert res.returncode == 0, res.stderr[-3000:]
        parts.append(str(tmp_path / f"p{k}.h5"))

    res = _cli("merge-crops", *parts, "--out", str(tmp_path / "out" / "all.h5"))

    _refused(
        res,
        "merge-crops",
        str(path),
        "(2 partial stores)",
        "no crops from 2 image(s)",
        "2 missing_image",
        "2 unreadable_image",
    )
    _nothing_written(tmp_path / "out")


def test_all_crops_failing_qc_fails_and_says_keep_failed(tmp_path):
    (tmp_path / "cells").mkdir()
    for k in range(2):
        Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "cells" / f"{k}.png")  # no cell

    with pytest.raises(
        InputError,
        match=r"cells: no crops from 2 image\(s\): all 2 crop\(s\) failed QC "
        r"\(cells 2; crop\.keep_failed keeps them\); nothing written",
    ):
        crop(tmp_path / "cells", tmp_path / "out" / "c.h5", InputConfig(), CFG)
    _nothing_written(tmp_path / "out")
    summary = crop(
        tmp_path / "cells", tmp_path / "c.h5", InputConfig(), CropConfig(size=16, keep_failed=True)
    )
    assert summary["n_crops"] == 2


def test_cli_train_out_naming_an_existing_file(tmp_path):
    _image(tmp_path / "images" / "a.png")
    path = _bbbc041(tmp_path, [("/images/a.png", GOOD)])
    crop(path, tmp_path / "c.h5", InputConfig(), CFG)
    (tmp_path / "run").write_text("a file, not a folder")

    for out in ("run", "run/inside"):
        res = _cli("train", "--crops", str(tmp_path / "c.h5"), "--out", str(tmp_path / out))
        _refused(
            res, "train", f"{tmp_path / 'run'}: is a file; --out {tmp_path / out} must name a run directory"
        )
    assert (tmp_path / "run").read_text() == "a file, not a folder"
