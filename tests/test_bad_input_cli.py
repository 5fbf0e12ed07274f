"""The malformed-input corpus through the command line: one line naming the file and the
problem, no traceback, nothing that looks complete; or a counted skip where some images are
readable."""

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
from bad_inputs import CFG, GOOD, _bbbc041, _crop_and_check, _image
from PIL import Image

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.readers import list_source_images
from infogan_cells.data.store import read_crop_store
from infogan_cells.errors import InputError
from infogan_cells.preprocess.crop import crop

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
