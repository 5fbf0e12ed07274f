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

import csv
import dataclasses
import gzip
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from infogan_cells.errors import InputError

log = logging.getLogger(__name__)

FORMATS = ("bbbc041", "csv", "folder", "tiff", "npz", "idx")
#: Formats whose cells are whole images or array entries (no boxes to find).
SINGLE_CELL_FORMATS = ("folder", "tiff", "npz", "idx")
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
            im = _open_pil(self.path)
            return im if im.mode in ("L", "RGB") else pil_to_array(im)
        return self.load()

    def load(self) -> np.ndarray:
        """(M, N, C) array for an image, (K, M, N, C) for a stack; dtype as stored."""
        if self.kind == "npz":
            return _load_npz_images(self.path)
        if self.kind == "idx":
            images = _read_idx(self.path)
            return images[..., None] if images.ndim == 3 else images
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            return load_tiff(self.path)
        return pil_to_array(_open_pil(self.path))


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


def segment_boxes(image: np.ndarray, source: int = 0) -> pd.DataFrame:
    """A box table (unlabelled) of the cells found in ``image`` (M, N[, C]) by segmentation."""
    from infogan_cells.preprocess.segment import segment_cells

    found = segment_cells(image)
    rows = [
        (source, k, *(float(v) for v in row), "")
        for k, row in enumerate(found[list(BOX_COLUMNS)].itertuples(index=False))
    ]
    return _box_table(rows)


# --------------------------------------------------------------------------------------
# Entry points


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path``: .json, .csv, .npz, an IDX name, or a folder (TIFF-only: tiff)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_dir():
        files = _image_files(path, IMAGE_SUFFIXES)
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
        sources = [ImageSource(name, p) for name, p, _ in _folder_entries(path, fmt)]
        cells = CellSource(path, fmt, sources, _box_table([]), segment=True)
    elif fmt == "bbbc041":
        cells = _read_bbbc041(path)
    elif fmt == "csv":
        cells = _read_csv(path)
    elif fmt in ("folder", "tiff"):
        cells = _read_folder(path, fmt)
    elif fmt == "npz":
        cells = _read_npz(path)
    else:
        cells = _read_idx_source(path)
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
# Box formats


def _read_bbbc041(path: Path) -> CellSource:
    entries = _read_json(path)
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
    return CellSource(path, "bbbc041", sources, _box_table(rows), skipped=skipped)


def _read_csv(path: Path) -> CellSource:
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
    return CellSource(path, "csv", sources, _box_table(rows), skipped=skipped)


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


def _read_folder(path: Path, fmt: str) -> CellSource:
    entries = _folder_entries(path, fmt)
    sources = [ImageSource(name, p) for name, p, _ in entries]
    rows = [(i, 0, np.nan, np.nan, np.nan, np.nan, label) for i, (_, _, label) in enumerate(entries)]
    return CellSource(path, fmt, sources, _box_table(rows))


def _folder_entries(path: Path, fmt: str) -> list[tuple[str, Path, str]]:
    """(name, file, label) of the images of a folder (or of one image file)."""
    suffixes = TIFF_SUFFIXES if fmt == "tiff" else IMAGE_SUFFIXES
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise InputError(f"{path}: not an image file ({', '.join(suffixes)})")
        return [(path.name, path, "")]
    if not path.is_dir():
        raise InputError(f"{path}: input not found")
    files = _image_files(path, suffixes)
    if not files:
        raise InputError(f"{path}: no images ({', '.join(suffixes)}) found in the folder")
    out = []
    for p in files:
        rel = p.relative_to(path)
        out.append((rel.as_posix(), p, rel.parts[0] if len(rel.parts) > 1 else ""))
    return out


def _image_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in suffixes
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_npz(path: Path) -> CellSource:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "images" not in keys:
                raise InputError(f"{path}: NPZ has no 'images' array (found: {', '.join(sorted(keys))})")
            shape, dtype = _npz_header(path, "images")
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
        path, "npz", [ImageSource(path.name, path, "npz")], _box_table(rows), channel_names=channel_names
    )


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an NPZ, read from its header without loading it."""
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(fh)
    return tuple(shape), np.dtype(dtype)


def _load_npz_images(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        images = npz["images"]
    return images[..., None] if images.ndim == 3 else np.moveaxis(images, 1, -1)


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
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read the IDX file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int(v) for v in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    start = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(data) - start < count * dtype.itemsize:
        raise InputError(f"{path}: IDX file truncated ({len(data) - start} bytes of data for shape {dims})")
    return np.frombuffer(data, dtype, count=count, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_labels_path(path: Path) -> Path | None:
    """The labels file beside an images file, by the MNIST naming (images-idx3 -> labels-idx1)."""
    name = path.name
    candidate = name.replace("images", "labels").replace("idx3", "idx1")
    if candidate != name and (path.parent / candidate).exists():
        return path.parent / candidate
    return None


def _read_idx_source(path: Path) -> CellSource:
    if not path.is_file():
        raise InputError(f"{path}: input not found")
    images = _read_idx(path)
    if images.ndim not in (3, 4):
        raise InputError(f"{path}: IDX images must be (N, H, W), found shape {images.shape}")
    n, h, w = images.shape[:3]
    labels_path = _idx_labels_path(path)
    labels = None
    if labels_path is None:
        log.info("%s: no labels file beside it; cells are unlabelled", path)
    else:
        labels = _read_idx(labels_path)
        if labels.ndim != 1 or len(labels) != n:
            raise InputError(f"{labels_path}: {labels.shape} labels for {n} images in {path.name}")
    names = _label_strings(path, labels, None, n)
    rows = [(0, k, 0.0, 0.0, float(h), float(w), names[k]) for k in range(n)]
    return CellSource(
        path,
        "idx",
        [ImageSource(path.name, path, "idx")],
        _box_table(rows),
        channel_names=["gray"] if images.ndim == 3 else None,
    )


# --------------------------------------------------------------------------------------
# Decoding


def _open_pil(path: Path):
    """Decode an image file with PIL into a mode numpy understands (L, RGB, I;16, I, F)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "RGB", "I;16", "I", "F"):
            return im
        if im.mode in ("1", "LA"):
            return im.convert("L")
        if im.mode in ("I;16B", "I;16L", "I;16N"):
            return im.convert("I")
        return im.convert("RGB")


def pil_to_array(im) -> np.ndarray:
    """A PIL image as an (M, N, C) array (RGB: C = 3, grey: C = 1), dtype as decoded."""
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def load_tiff(path: Path) -> np.ndarray:
    """A one-cell TIFF as (M, N, C): channels first (C, Y, X) or last (Y, X, C), dtype kept.

    The channel axis comes from the file's axes (ImageJ/OME metadata); without it, a 3-D
    array's shortest axis, first or last, holds the channels.
    """
    import struct

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"{path}: no image in the TIFF file")
            series = tif.series[0]
            arr = series.asarray()
            axes = series.axes
    except FileNotFoundError:
        raise
    except (tifffile.TiffFileError, IndexError, KeyError, ValueError, struct.error, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
    keep = [k for k, s in enumerate(arr.shape) if s > 1 or axes[k] in "YX"]
    arr = arr.reshape([arr.shape[k] for k in keep])
    axes = "".join(axes[k] for k in keep)
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise InputError(
            f"{path}: expected a 2-D or 3-D (channels) image, found shape {arr.shape} axes {axes}"
        )
    if axes.endswith("YX") or (not axes.endswith(("S", "C")) and arr.shape[0] < arr.shape[-1]):
        return np.moveaxis(arr, 0, -1)
    return arr


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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the file ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def _box_table(rows: list[tuple]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(BOX_TABLE_COLUMNS))
    table = table.astype(
        {"source": np.int64, "source_index": np.int64, **{c: np.float64 for c in BOX_COLUMNS}}
    )
    table["label"] = table["label"].astype(object)
    return table


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
