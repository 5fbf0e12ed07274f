"""Read cells from every supported input into one representation, a :class:`CellSource`.

A ``CellSource`` is a list of *sources*, each one image loaded on demand (an (M, N, C) array
of any dtype), and one table of *boxes* with columns ``source`` (index into the sources),
``source_index`` (the box's number in its image's entry, or the cell's index in an array
file), ``min_row``, ``min_col``, ``max_row``, ``max_col`` (pixels, max exclusive) and
``label`` (a string, ``""`` when unknown). Formats (``fmt``):

``bbbc041``  JSON list of ``{"image": {"pathname"}, "objects": [{"bounding_box", "category"}]}``;
             ``pathname`` is relative to the JSON's folder (leading "/" stripped) or to its
             ``images/`` sibling, and may not leave that folder.
``csv``      columns ``image,min_row,min_col,max_row,max_col[,label]``; ``image`` relative to
             the CSV's folder.
``folder``   single-cell images (PNG, JPG, TIF); the first sub-folder is the label, loose
             files are unlabelled. With ``segment=True``: whole images (or one image file)
             whose boxes come from :func:`infogan_cells.preprocess.segment.segment_cells`.
``tiff``     a folder of multi-channel TIFFs, one cell each (imaging flow cytometry exports);
             channels first or last, any bit depth.
``npz``      ``images`` (N, C, H, W) or (N, H, W), optional ``labels`` (indices into
             ``class_names``, or strings) and ``channel_names``: one *stack* source.
``idx``      MNIST IDX images (``*-images-idx3-ubyte[.gz]``) with the labels file beside it
             (``*-labels-idx1-ubyte[.gz]``): one stack source.

Single-cell formats give each cell a box covering its whole image (NaN in the table for image
files, whose size is known once loaded). Stack sources load as (N, H, W, C) and their box's
``source_index`` picks the cell. A user's mistake (unknown format,
empty folder, mismatched arrays, a path escaping the data root) raises :class:`InputError`
naming the file; a bad row or box is a counted skip in :attr:`CellSource.skipped`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infogan_cells.data.cells import (
    FORMATS,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    CellSource,
    ImageSource,
    box_table,
)
from infogan_cells.data.formats import (
    folder_entries,
    image_files,
    read_bbbc041,
    read_csv,
    read_folder,
    read_idx_source,
    read_npz,
)
from infogan_cells.errors import InputError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Entry points


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path``: .json, .csv, .npz, an IDX name, or a folder (TIFF-only: tiff)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_dir():
        files = image_files(path, IMAGE_SUFFIXES)
        if files and all(p.suffix.lower() in TIFF_SUFFIXES for p in files):
            return "tiff"
        return "folder"
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "bbbc041"
    if suffix == ".csv":
        return "csv"
    if suffix == ".npz":
        return "npz"
    if "idx" in name:
        return "idx"
    if suffix in IMAGE_SUFFIXES:
        return "folder"
    raise InputError(
        f"{path}: cannot tell the input format from the name; set input.format (one of {', '.join(FORMATS)})"
    )


def read_cells(
    path: str | Path, fmt: str = "auto", *, segment: bool = False, images: Sequence[str] | None = None
) -> CellSource:
    """Read an input's sources and boxes (images are loaded later, one at a time).

    Parameters
    ----------
    path : path
        Annotation file, folder, array file or image (see the module docstring).
    fmt : str
        ``auto`` or one of :data:`FORMATS`.
    segment : bool
        Whole images without boxes: boxes come from segmentation when each image is loaded.
    images : sequence of str, optional
        Keep only the sources with these names (as :func:`list_source_images` gives them).
    """
    path = Path(path)
    fmt = _resolve_format(path, fmt)
    if segment:
        if fmt not in ("folder", "tiff"):
            raise InputError(
                f"{path}: segmentation needs whole images (a folder or an image file), not {fmt} input"
            )
        sources = [ImageSource(name, p) for name, p, _ in folder_entries(path, fmt)]
        cells = CellSource(path, fmt, sources, box_table([]), segment=True)
    elif fmt == "bbbc041":
        cells = read_bbbc041(path)
    elif fmt == "csv":
        cells = read_csv(path)
    elif fmt in ("folder", "tiff"):
        cells = read_folder(path, fmt)
    elif fmt == "npz":
        cells = read_npz(path)
    else:
        cells = read_idx_source(path)
    if not cells.sources:
        raise InputError(
            f"{path}: names no images"
            + (f" ({len(cells.skipped)} unreadable rows or boxes)" if cells.skipped else "")
        )
    if images is not None:
        cells = _select(cells, images)
    return cells


def list_source_images(path: str | Path, fmt: str = "auto", *, segment: bool = False) -> list[str]:
    """Names of the whole images of an input, one crop job each.

    Box formats (bbbc041, csv) name the images in the file, in order; with ``segment`` these
    are the folder's images. Single-cell inputs (folder, tiff, npz, idx) give ``[]``: they
    are cropped in one job.
    """
    path = Path(path)
    fmt = _resolve_format(path, fmt)
    if segment or fmt in ("bbbc041", "csv"):
        cells = read_cells(path, fmt, segment=segment)
        return list(dict.fromkeys(s.name for s in cells.sources))
    return []


# --------------------------------------------------------------------------------------
# Helpers


def _resolve_format(path: Path, fmt: str) -> str:
    if fmt == "auto":
        return detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown input format {fmt!r} (known: auto, {', '.join(FORMATS)})")
    if not path.exists():
        raise InputError(f"{path}: input not found")
    return fmt


def _select(cells: CellSource, names: Sequence[str]) -> CellSource:
    """Keep the sources named in ``names``; skips that no source claims go with the first one."""
    wanted = set(names)
    known = {s.name for s in cells.sources}
    unknown = sorted(wanted - known)
    if unknown:
        raise InputError(f"{cells.path}: no source image named {', '.join(map(repr, unknown))}")
    keep = [i for i, s in enumerate(cells.sources) if s.name in wanted]
    new_index = {old: new for new, old in enumerate(keep)}
    boxes = cells.boxes[cells.boxes["source"].isin(keep)].copy()
    boxes["source"] = boxes["source"].map(new_index).astype(np.int64)
    first_kept = bool(keep) and keep[0] == 0
    skipped = [(new_index[i], r) for i, r in cells.skipped if i in new_index]
    # A row whose image could not be read belongs to no image; count it once, with the first.
    skipped += [(-1, r) for i, r in cells.skipped if i == -1 and first_kept]
    return dataclasses.replace(
        cells, sources=[cells.sources[i] for i in keep], boxes=boxes.reset_index(drop=True), skipped=skipped
    )
