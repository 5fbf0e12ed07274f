"""The one representation of cells from any input: :class:`CellSource` (images and a box table)
and :class:`ImageSource`, with the format names and box columns."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from infogan_cells.data.images import load_npz_images, load_tiff, open_pil, pil_to_array, read_idx

log = logging.getLogger(__name__)


FORMATS = ("bbbc041", "csv", "folder", "tiff", "npz", "idx")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
BOX_COLUMNS = ("min_row", "min_col", "max_row", "max_col")
BOX_TABLE_COLUMNS = ("source", "source_index", *BOX_COLUMNS, "label")


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One image (or, for array files, one stack of cells) of an input, loaded on demand.

    ``name`` is how the input names it (the ``source_image`` of its crops); ``kind`` is
    ``"image"`` (a PNG/JPG/TIF file), ``"npz"`` or ``"idx"`` (stacks).
    """

    name: str
    path: Path
    kind: str = "image"

    @property
    def is_stack(self) -> bool:
        return self.kind in ("npz", "idx")

    def decode(self):
        """The decoded image: a PIL image for 8-bit grey/RGB files (cheapest to crop), else
        an array as :meth:`load` gives it. Raises ``OSError`` for a missing or corrupt file."""
        if self.kind == "image" and self.path.suffix.lower() not in TIFF_SUFFIXES:
            im = open_pil(self.path)
            return im if im.mode in ("L", "RGB") else pil_to_array(im)
        return self.load()

    def load(self) -> np.ndarray:
        """(M, N, C) array for an image, (K, M, N, C) for a stack; dtype as stored."""
        if self.kind == "npz":
            return load_npz_images(self.path)
        if self.kind == "idx":
            images = read_idx(self.path)
            return images[..., None] if images.ndim == 3 else images
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            return load_tiff(self.path)
        return pil_to_array(open_pil(self.path))


@dataclasses.dataclass
class CellSource:
    """Every cell of an input: sources, a box table, and the rows skipped while reading."""

    path: Path
    format: str
    sources: list[ImageSource]
    boxes: pd.DataFrame
    channel_names: list[str] | None = None
    segment: bool = False
    #: (source index or -1, reason) for every box or row that could not be read.
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def boxes_of(self, i: int, image: np.ndarray | None = None) -> pd.DataFrame:
        """The boxes of source ``i``; with ``segment`` they are found in ``image`` (its array)."""
        if not self.segment:
            return self.boxes[self.boxes["source"] == i].reset_index(drop=True)
        return segment_boxes(image, i)


def box_table(rows: list[tuple]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(BOX_TABLE_COLUMNS))
    table = table.astype(
        {"source": np.int64, "source_index": np.int64, **{c: np.float64 for c in BOX_COLUMNS}}
    )
    table["label"] = table["label"].astype(object)
    return table


def segment_boxes(image: np.ndarray, source: int = 0) -> pd.DataFrame:
    """A box table (unlabelled) of the cells found in ``image`` (M, N[, C]) by segmentation."""
    from infogan_cells.preprocess.segment import segment_cells

    found = segment_cells(image)
    rows = [
        (source, k, *(float(v) for v in row), "")
        for k, row in enumerate(found[list(BOX_COLUMNS)].itertuples(index=False))
    ]
    return box_table(rows)
