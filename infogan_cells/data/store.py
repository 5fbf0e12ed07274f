"""The crop store ``crops.h5``: single-cell crops with one metadata column per dataset.

Layout (documented in ``docs/hdf5.md``)::

    /images            (N, H, W, C) uint8, one crop per chunk, gzip; attrs axes="NYXC",
                       channel_names
    /obs/<column>      (N,) one dataset per metadata column; strings are UTF-8; the group
                       carries AnnData's dataframe encoding (infogan_cells.data.h5ad), so
                       ``anndata.io.read_elem(f["obs"])`` reads it
    attrs              format="infogan-cells/crops", format_version, summary (JSON), config (YAML)

The table beside it, ``crops.csv``, holds the same ``obs`` columns. Every write is atomic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from infogan_cells._io import atomic_path
from infogan_cells.data.h5ad import read_dataframe, write_dataframe
from infogan_cells.errors import InputError

log = logging.getLogger(__name__)

FORMAT = "infogan-cells/crops"
FORMAT_VERSION = 1

#: Columns every crop store has, in this order; more (QC values) may follow.
REQUIRED_OBS = (
    "source_image",
    "source_index",
    "min_row",
    "min_col",
    "max_row",
    "max_col",
    "label",
    "qc_pass",
    "qc_reason",
)


@dataclasses.dataclass
class CropSet:
    """Crops in memory: ``images`` (N, H, W, C) uint8 and their metadata table ``obs``."""

    images: np.ndarray | None
    obs: pd.DataFrame
    channel_names: list[str]
    summary: dict
    config: str = ""

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def labels(self) -> np.ndarray:
        """Label strings, ``""`` where unknown."""
        return self.obs["label"].to_numpy(dtype=str)


def write_crop_store(
    path: str | Path,
    images: np.ndarray,
    obs: pd.DataFrame,
    channel_names: Sequence[str],
    *,
    summary: Mapping | None = None,
    config: str = "",
    csv: bool = True,
    compression: int | None = 4,
) -> None:
    """Write ``images`` (N, H, W, C) uint8 and ``obs`` to ``path`` atomically (and ``crops.csv`` beside it).

    ``obs`` must have :data:`REQUIRED_OBS` columns and N rows. ``compression`` is the gzip
    level of ``/images`` (None: uncompressed); on crops level 1 makes files within 2% of
    level 4's size in two thirds of the time.
    """
    path = Path(path)
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, C) uint8, got {images.shape} {images.dtype}")
    if len(obs) != len(images):
        raise ValueError(f"obs has {len(obs)} rows for {len(images)} images")
    missing = [c for c in REQUIRED_OBS if c not in obs.columns]
    if missing:
        raise ValueError(f"obs lacks columns {missing}")
    if len(channel_names) != images.shape[3]:
        raise ValueError(f"{len(channel_names)} channel names for {images.shape[3]} channels")
    n, h, w, c = images.shape
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["summary"] = json.dumps(dict(summary or {}))
            f.attrs["config"] = config
            # one crop per chunk: a shuffled reader (CropDataset) decompresses one crop per item;
            # gzip's 32 KiB window makes bigger chunks hardly smaller (docs/benchmarks.md)
            gzip = bool(n) and compression is not None
            ds = f.create_dataset(
                "images",
                data=images,
                chunks=(1, h, w, c) if n else None,
                compression="gzip" if gzip else None,
                compression_opts=compression if gzip else None,
                shuffle=False,
            )  # a no-op on one-byte pixels
            ds.attrs["axes"] = "NYXC"
            ds.attrs["channel_names"] = list(map(str, channel_names))
            grp = write_dataframe(f, "obs", obs)
            grp.attrs["columns"] = list(map(str, obs.columns))  # read before column-order existed
    if csv:
        with atomic_path(path.with_suffix(".csv")) as tmp:
            obs.to_csv(tmp, index_label="crop_index")
    log.info("wrote %d crops (%dx%dx%d) to %s", n, h, w, c, path)


def open_hdf5(path: Path, what: str, *, unreadable: str = "not an HDF5 file") -> h5py.File:
    """Open ``path`` to read; raise :class:`InputError` naming it (as ``what``) if it is missing or not HDF5."""
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: {unreadable} ({err})") from None


def read_crop_store(path: str | Path, *, load_images: bool = True) -> CropSet:
    """Read a crop store; raise :class:`InputError` naming the file if it is not one of ours."""
    path = Path(path)
    with open_hdf5(path, "crop store", unreadable="not a readable HDF5 file") as f:
        if f.attrs.get("format") != FORMAT:
            raise InputError(
                f"{path}: not an infogan-cells crop store (no format='{FORMAT}' attribute; "
                "make one with `infogan-cells crop`)"
            )
        if "images" not in f or "obs" not in f:
            raise InputError(f"{path}: crop store lacks /images or /obs")
        ds = f["images"]
        if ds.ndim != 4 or ds.dtype != np.uint8:
            raise InputError(f"{path}: /images must be (N, H, W, C) uint8, found {ds.shape} {ds.dtype}")
        images = ds[...] if load_images else None
        channel_names = [str(c) for c in ds.attrs.get("channel_names", [])]
        obs = read_dataframe(f["obs"])
        summary = json.loads(f.attrs.get("summary", "{}"))
        config = str(f.attrs.get("config", ""))
    if len(obs) != (len(images) if images is not None else len(obs)):
        raise InputError(f"{path}: {len(obs)} obs rows for {len(images)} images")
    return CropSet(images=images, obs=obs, channel_names=channel_names, summary=summary, config=config)


def merge_summaries(summaries: Sequence[Mapping]) -> dict:
    """Add up numeric entries (and nested dicts of counts) of crop summaries."""
    out: dict = {}
    for s in summaries:
        for k, v in s.items():
            if isinstance(v, Mapping):
                out[k] = merge_summaries([out.get(k, {}), v])
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, list):
                out[k] = list(out.get(k, [])) + list(v)
            else:
                out.setdefault(k, v)
    return out


def holdout_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (held out, the rest) of a fixed random split of ``n`` crops, at least 2 in each;
    the same for a given ``n`` and ``fraction`` everywhere (training and analysis both use it)."""
    order = np.random.default_rng(0).permutation(n)
    n_hold = min(max(2, round(fraction * n)), n - 2)
    return np.sort(order[:n_hold]), np.sort(order[n_hold:])
