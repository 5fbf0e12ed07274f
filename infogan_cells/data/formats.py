"""One reader per input format (BBBC041 JSON, CSV, a folder, TIFF, NPZ, IDX), each returning a
:class:`~infogan_cells.data.cells.CellSource`."""

from __future__ import annotations

import csv
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from infogan_cells.data.cells import (
    BOX_COLUMNS,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    CellSource,
    ImageSource,
    box_table,
)
from infogan_cells.data.images import npz_header, read_idx
from infogan_cells.errors import InputError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Box formats


def read_bbbc041(path: Path) -> CellSource:
    entries = read_json(path)
    if not isinstance(entries, list):
        raise InputError(
            f"{path}: expected a BBBC041 JSON list of image entries, found {type(entries).__name__}"
        )
    sources: list[ImageSource] = []
    rows: list[tuple] = []
    skipped: list[tuple[int, str]] = []
    for k, entry in enumerate(entries):
        try:
            pathname = entry["image"]["pathname"]
            objects = entry.get("objects")
        except (TypeError, KeyError, AttributeError):
            raise InputError(f"{path}: entry {k} has no image.pathname") from None
        if not isinstance(pathname, str) or not isinstance(objects, (list, type(None))):
            raise InputError(f"{path}: entry {k}: image.pathname must be a string and objects a list")
        name, file = _resolve_inside(path, pathname, also_under="images")
        if objects is None:
            log.warning("%s: entry %d (%s) has no 'objects' list: no boxes in this image", path, k, name)
            objects = []
        i = len(sources)
        sources.append(ImageSource(name, file))
        for j, obj in enumerate(objects):
            try:
                box = obj["bounding_box"]
                coords = [float(box[end][axis]) for end in ("minimum", "maximum") for axis in ("r", "c")]
            except (TypeError, KeyError, ValueError):
                log.warning(
                    "%s: entry %d (%s) object %d: unreadable bounding_box, skipped (bad_box)",
                    path,
                    k,
                    name,
                    j,
                )
                skipped.append((i, "bad_box"))
                continue
            label = obj.get("category", "") if isinstance(obj, dict) else ""
            rows.append((i, j, *coords, "" if label is None else str(label)))
    return CellSource(path, "bbbc041", sources, box_table(rows), skipped=skipped)


def read_csv(path: Path) -> CellSource:
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            table = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the CSV: {err}") from None
    missing = [c for c in ("image", *BOX_COLUMNS) if c not in header]
    if missing:
        raise InputError(
            f"{path}: CSV lacks the columns {', '.join(missing)} "
            f"(expected image,min_row,min_col,max_row,max_col,label)"
        )
    col = {c: header.index(c) for c in header}
    by_name: dict[str, int] = {}
    sources: list[ImageSource] = []
    rows: list[tuple] = []
    skipped: list[tuple[int, str]] = []
    counts: dict[int, int] = {}
    for line_no, values in enumerate(table, start=2):
        if not any(v.strip() for v in values):
            continue
        try:
            image = values[col["image"]].strip()
            coords = [float(values[col[c]]) for c in BOX_COLUMNS]
            if not image or not all(np.isfinite(coords)):
                raise ValueError
        except (IndexError, ValueError):
            log.warning("%s: line %d: unreadable row %r, skipped (bad_row)", path, line_no, ",".join(values))
            known = values[col["image"]].strip() if len(values) > col["image"] else ""
            skipped.append((by_name.get(known, -1), "bad_row"))
            continue
        if image not in by_name:
            name, file = _resolve_inside(path, image)
            by_name[image] = len(sources)
            sources.append(ImageSource(name, file))
        i = by_name[image]
        label = values[col["label"]].strip() if "label" in col and len(values) > col["label"] else ""
        rows.append((i, counts.get(i, 0), *coords, label))
        counts[i] = counts.get(i, 0) + 1
    return CellSource(path, "csv", sources, box_table(rows), skipped=skipped)


def _resolve_inside(annotation: Path, name: str, *, also_under: str | None = None) -> tuple[str, Path]:
    """(clean name, file) of an image named in an annotation file, refusing names that leave its folder."""
    root = Path(os.path.normpath(annotation.parent.absolute()))
    rel = name.replace("\\", "/").lstrip("/")
    clean = os.path.normpath(rel) if rel else ""
    if not rel or clean == ".." or clean.startswith("../") or PurePosixPath(rel).is_absolute():
        raise InputError(f"{annotation}: image path {name!r} escapes the data root {root}")
    clean = PurePosixPath(clean).as_posix()
    file = root / clean
    if also_under and not file.exists() and (root / also_under / clean).exists():
        file = root / also_under / clean
    return clean, file


# --------------------------------------------------------------------------------------
# Single-cell formats


def read_folder(path: Path, fmt: str) -> CellSource:
    entries = folder_entries(path, fmt)
    sources = [ImageSource(name, p) for name, p, _ in entries]
    rows = [(i, 0, np.nan, np.nan, np.nan, np.nan, label) for i, (_, _, label) in enumerate(entries)]
    return CellSource(path, fmt, sources, box_table(rows))


def folder_entries(path: Path, fmt: str) -> list[tuple[str, Path, str]]:
    """(name, file, label) of the images of a folder (or of one image file)."""
    suffixes = TIFF_SUFFIXES if fmt == "tiff" else IMAGE_SUFFIXES
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise InputError(f"{path}: not an image file ({', '.join(suffixes)})")
        return [(path.name, path, "")]
    if not path.is_dir():
        raise InputError(f"{path}: input not found")
    files = image_files(path, suffixes)
    if not files:
        raise InputError(f"{path}: no images ({', '.join(suffixes)}) found in the folder")
    out = []
    for p in files:
        rel = p.relative_to(path)
        out.append((rel.as_posix(), p, rel.parts[0] if len(rel.parts) > 1 else ""))
    return out


def image_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in suffixes
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_npz(path: Path) -> CellSource:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "images" not in keys:
                raise InputError(f"{path}: NPZ has no 'images' array (found: {', '.join(sorted(keys))})")
            shape, dtype = npz_header(path, "images")
            labels = npz["labels"] if "labels" in keys else None
            class_names = [str(c) for c in npz["class_names"]] if "class_names" in keys else None
            channel_names = [str(c) for c in npz["channel_names"]] if "channel_names" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path}: not a readable NPZ file ({err})") from None
    numeric = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    if len(shape) not in (3, 4) or not numeric:
        raise InputError(f"{path}: 'images' must be (N, C, H, W) or (N, H, W) numbers, found {shape} {dtype}")
    n = shape[0]
    n_channels = shape[1] if len(shape) == 4 else 1
    if labels is not None and len(labels) != n:
        raise InputError(f"{path}: 'labels' has {len(labels)} entries for {n} images")
    if channel_names is not None and len(channel_names) != n_channels:
        raise InputError(
            f"{path}: 'channel_names' has {len(channel_names)} entries for {n_channels} channels"
        )
    names = _label_strings(path, labels, class_names, n)
    h, w = shape[-2:]
    rows = [(0, k, 0.0, 0.0, float(h), float(w), names[k]) for k in range(n)]
    return CellSource(
        path, "npz", [ImageSource(path.name, path, "npz")], box_table(rows), channel_names=channel_names
    )


def _label_strings(path: Path, labels, class_names: list[str] | None, n: int) -> list[str]:
    if labels is None:
        return [""] * n
    labels = np.asarray(labels)
    if labels.dtype.kind in "US":
        return [str(v) for v in labels]
    if labels.dtype.kind not in "iu":
        raise InputError(f"{path}: 'labels' must be integer indices or strings, found {labels.dtype}")
    if class_names is None:
        return ["" if v < 0 else str(int(v)) for v in labels]
    bad = labels[(labels >= len(class_names))]
    if bad.size:
        raise InputError(
            f"{path}: label index {int(bad[0])} is outside 'class_names' ({len(class_names)} names)"
        )
    return ["" if v < 0 else class_names[int(v)] for v in labels]


# MNIST IDX: magic = 0, 0, dtype code, number of dimensions; then big-endian int32 sizes.


def _idx_labels_path(path: Path) -> Path | None:
    """The labels file beside an images file, by the MNIST naming (images-idx3 -> labels-idx1)."""
    name = path.name
    candidate = name.replace("images", "labels").replace("idx3", "idx1")
    if candidate != name and (path.parent / candidate).exists():
        return path.parent / candidate
    return None


def read_idx_source(path: Path) -> CellSource:
    if not path.is_file():
        raise InputError(f"{path}: input not found")
    images = read_idx(path)
    if images.ndim not in (3, 4):
        raise InputError(f"{path}: IDX images must be (N, H, W), found shape {images.shape}")
    n, h, w = images.shape[:3]
    labels_path = _idx_labels_path(path)
    labels = None
    if labels_path is None:
        log.info("%s: no labels file beside it; cells are unlabelled", path)
    else:
        labels = read_idx(labels_path)
        if labels.ndim != 1 or len(labels) != n:
            raise InputError(f"{labels_path}: {labels.shape} labels for {n} images in {path.name}")
    names = _label_strings(path, labels, None, n)
    rows = [(0, k, 0.0, 0.0, float(h), float(w), names[k]) for k in range(n)]
    return CellSource(
        path,
        "idx",
        [ImageSource(path.name, path, "idx")],
        box_table(rows),
        channel_names=["gray"] if images.ndim == 3 else None,
    )


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the file ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
