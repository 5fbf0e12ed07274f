"""QC montages: a grid of crops per label, and one of the crops that failed QC.

A montage shows up to :data:`MAX_TILES` crops, spread evenly over the set (not just the
first ones), so a glance tells whether the boxes, normalisation and QC did what they should.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infogan_cells._io import atomic_path

MAX_TILES = 64
PAD = 2


def montage(crops: np.ndarray, *, ncols: int = 8, max_tiles: int = MAX_TILES, pad: int = PAD) -> np.ndarray:
    """A grid of crops as one image.

    Parameters
    ----------
    crops : (N, H, W, C) uint8 ndarray
        C = 1 shows grey, C = 3 colour; other channel counts show each channel side by side.
    ncols, max_tiles, pad : int
        Tiles per row, most tiles shown (evenly spaced over N), white gap between tiles.

    Returns
    -------
    grid : (R, S, 3) or (R, S) uint8 ndarray
        A single white tile when ``crops`` is empty.
    """
    n, h, w, c = crops.shape
    if n > max_tiles:
        crops = crops[np.linspace(0, n - 1, max_tiles).round().astype(int)]
        n = max_tiles
    if c not in (1, 3):
        crops = np.concatenate([crops[..., k] for k in range(c)], axis=2)[..., None]
        w *= c
    channels = 3 if c == 3 else 1
    if n == 0:
        return np.full((h + 2 * pad, w + 2 * pad, channels), 255, np.uint8).squeeze()
    grid = tile(crops, min(ncols, n), pad=pad, fill=255)
    return grid.squeeze(axis=2) if channels == 1 else grid


def tile(
    tiles: np.ndarray, n_cols: int, *, pad: int = 0, fill: int = 0, group_cols: int | None = None
) -> np.ndarray:
    """Tiles (N, H, W, K) uint8 in row-major order -> one sheet (R, S, K) uint8.

    ``pad`` pixels of ``fill`` around and between tiles; ``group_cols`` adds a wider gap (4 * pad)
    after every that many columns (separates panels). At least one row, empty where no tile.
    """
    n, h, w, k = tiles.shape
    n_rows = max(1, -(-n // n_cols))
    gaps = [pad + (3 * pad if group_cols and j and j % group_cols == 0 else 0) for j in range(n_cols)]
    col0 = np.cumsum([0] + [gaps[j] + w for j in range(n_cols)])[:-1] + np.array(gaps)
    out = np.full((n_rows * (h + pad) + pad, int(col0[-1]) + w + pad, k), fill, np.uint8)
    for i in range(n):
        r, c = divmod(i, n_cols)
        y, x = pad + r * (h + pad), int(col0[c])
        out[y : y + h, x : x + w] = tiles[i]
    return out


def montage_name(stem: str, label: str) -> str:
    """``<stem>_montage_<label>.png`` with the label made file-name safe ('' -> 'unlabelled')."""
    safe = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_") or "unlabelled"
    return f"{stem}_montage_{safe}.png"


def write_montage(path: str | Path, crops: np.ndarray) -> Path:
    """Write the montage of ``crops`` to ``path`` (PNG) atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(montage(crops)).save(tmp, format="PNG", compress_level=3)
    return path


def write_qc_montages(
    folder: str | Path,
    stem: str,
    crops: np.ndarray,
    labels: Sequence[str],
    passed: np.ndarray,
    rejected: np.ndarray,
) -> list[Path]:
    """One montage per label of the crops that passed QC, and ``<stem>_montage_rejected.png``.

    ``rejected`` (M, H, W, C) holds the failed crops (kept or dropped); its montage is written
    even when empty, so the file always exists.
    """
    folder = Path(folder)
    labels = np.asarray(labels, dtype=object).astype(str)
    written = []
    for label in sorted(set(labels[passed])):
        written.append(write_montage(folder / montage_name(stem, label), crops[passed & (labels == label)]))
    written.append(write_montage(folder / f"{stem}_montage_rejected.png", rejected))
    return written
