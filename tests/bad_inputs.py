"""Small inputs for the bad-input tests: images, BBBC041 annotation files, a crop-and-check helper."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.store import read_crop_store
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
