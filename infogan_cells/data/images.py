"""Opening image files: PIL images to arrays, and TIFFs (multi-page, OME) to (M, N[, C]) arrays."""

from __future__ import annotations

import gzip
import logging
import zipfile
from pathlib import Path

import numpy as np

from infogan_cells.errors import InputError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Decoding


def open_pil(path: Path):
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


def npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an NPZ, read from its header without loading it."""
    with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(fh)
    return tuple(shape), np.dtype(dtype)


def load_npz_images(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        images = npz["images"]
    return images[..., None] if images.ndim == 3 else np.moveaxis(images, 1, -1)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
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
