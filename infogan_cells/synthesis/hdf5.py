"""The HDF5 writer of synthetic cells (layout in ``docs/hdf5.md``), and the master file that
joins shards with virtual datasets."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from infogan_cells._io import atomic_path
from infogan_cells.data.h5ad import write_dataframe
from infogan_cells.synthesis.writers import (
    GZIP_LEVEL,
    LATENT_COLUMNS,
    OBS_COLUMNS,
    Batch,
    Writer,
    _AtomicFiles,
    chunk_images,
    compression_options,
    compression_threads,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# HDF5


class HDF5Writer(Writer):
    """One synthetic HDF5 file of ``n`` rows, pre-sized and chunked by whole images.

    ``attrs`` become the root attributes (dicts and lists stored as JSON text). The file is
    written under a temporary name and renamed on :meth:`commit`, once every row is written.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n: int,
        image_shape: Sequence[int],
        channel_names: Sequence[str],
        z_dim: int,
        n_codes: int,
        n_continuous: int,
        attrs: Mapping[str, Any],
        compression: str = "gzip",
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.n = int(n)
        self._files = _AtomicFiles()
        tmp = self._files.add(self.path, overwrite=overwrite)
        self._rows = 0
        try:
            # a chunk cache that holds a few chunks, so a batch that ends mid-chunk does not
            # compress that chunk twice
            self._f = h5py.File(tmp, "w", rdcc_nbytes=32 << 20, rdcc_nslots=10007)
            for key, value in attrs.items():
                self._f.attrs[key] = _attr_value(value)
            k = chunk_images(image_shape, self.n)
            images = self._f.create_dataset(
                "images",
                shape=(self.n, *image_shape),
                dtype=np.uint8,
                chunks=(k, *image_shape),
                **compression_options(compression),
                maxshape=None if self.n else (None, *image_shape),
            )  # empty shard
            images.attrs["axes"] = "NYXC"
            images.attrs["channel_names"] = [str(c) for c in channel_names]
            obs = self._f.create_group("obs")
            for name in ("index", "seed", "category"):
                obs.create_dataset(name, shape=(self.n,), dtype=np.int64)
            obs.create_dataset("label", shape=(self.n,), dtype=h5py.string_dtype("utf-8"))
            obs.create_dataset("confidence", shape=(self.n,), dtype=np.float32, fillvalue=np.nan)
            write_dataframe(self._f, "obs", columns=OBS_COLUMNS, index_column="index")  # AnnData's encoding
            latent = self._f.create_group("latent")
            latent.create_dataset("z", shape=(self.n, z_dim), dtype=np.float32)
            latent.create_dataset("categorical", shape=(self.n, n_codes), dtype=np.int64)
            latent.create_dataset("continuous", shape=(self.n, n_continuous), dtype=np.float32)
        except BaseException:
            self.abort()
            raise
        self._images = self._f["images"]
        self._chunk = k
        # gzip chunks are compressed on a pool of threads (zlib releases the GIL) and written with
        # write_direct_chunk, in order; rows of a chunk not yet complete wait in self._partial
        self._deflate = compression == "gzip" and self.n > 0
        self._partial: list[np.ndarray] = []
        self._partial_start = 0
        self._threads = compression_threads()
        self._pool = (
            ThreadPoolExecutor(self._threads, thread_name_prefix="deflate") if self._deflate else None
        )
        self._compressing: collections.deque = collections.deque()

    def write(self, batch: Batch) -> None:
        a, b = batch.offset, batch.offset + len(batch)
        if a != self._rows or b > self.n:
            raise ValueError(
                f"{self.path}: batch rows {a}..{b} out of order (next row {self._rows} of {self.n})"
            )
        if self._deflate:
            self._deflate_rows(batch.images)
        else:
            # whole chunks at a time: h5py holds the GIL while it compresses, and short calls let
            # the generator's threads run between them
            step = self._chunk * max(1, 8 // max(1, self._chunk))
            for i in range(0, len(batch), step):
                self._images[a + i : min(b, a + i + step)] = batch.images[i : i + step]
        f = self._f
        for name in OBS_COLUMNS:
            if getattr(batch, name) is not None:
                f["obs"][name][a:b] = getattr(batch, name)
        for name in LATENT_COLUMNS:
            if f["latent"][name].shape[1]:
                f["latent"][name][a:b] = getattr(batch, name)
        self._rows = b

    def _deflate_rows(self, images: np.ndarray) -> None:
        """Queue whole chunks of ``images`` (the rows after those already queued) for compression,
        keeping a trailing partial chunk; write the chunks whose compression has finished."""
        k = self._chunk
        if self._partial:
            images = np.concatenate([*self._partial, images])
        start = self._partial_start
        n_whole = len(images) // k * k
        if start + len(images) >= self.n:  # the last chunk of the file: pad it (HDF5 stores it whole)
            n_whole = len(images)
        for i in range(0, n_whole, k):
            block = images[i : i + k]
            if len(block) < k:
                block = np.concatenate([block, np.zeros((k - len(block), *block.shape[1:]), np.uint8)])
            self._compressing.append(
                (start + i, self._pool.submit(zlib.compress, block.tobytes(), GZIP_LEVEL))
            )
        self._partial = [images[n_whole:]] if n_whole < len(images) else []
        self._partial_start = start + n_whole
        self._write_compressed(wait=len(self._compressing) > 2 * self._threads)

    def _write_compressed(self, wait: bool) -> None:
        offsets = (0,) * (self._images.ndim - 1)
        while self._compressing and (wait or self._compressing[0][1].done()):
            row, future = self._compressing.popleft()
            self._images.id.write_direct_chunk((row, *offsets), future.result())
            wait = wait and len(self._compressing) > self._threads

    def commit(self) -> None:
        if self._rows != self.n:
            raise RuntimeError(f"{self.path}: {self._rows} of {self.n} rows written")
        if self._deflate:
            while self._compressing:
                self._write_compressed(wait=True)
            self._pool.shutdown()
        self._f.close()
        self._files.commit()
        log.info("wrote %s (%d images)", self.path, self.n)

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        with contextlib.suppress(Exception):
            self._f.close()
        self._files.abort()


def _attr_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return str(value)  # not a str subclass (torch.__version__), which h5py cannot store
    return value


def write_master(
    shards: Sequence[Path], out_path: str | Path, attrs: Mapping[str, Any], *, overwrite: bool = False
) -> None:
    """Join shard files (in order) into one file of HDF5 virtual datasets, atomically.

    Sources are named by paths relative to ``out_path``'s folder, so the folder can move.
    """
    out_path = Path(out_path)
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(h5py.File(p, "r")) for p in shards]
        sizes = [f["images"].shape[0] for f in files]
        total = int(sum(sizes))
        rel = [relative_source(p, out_path.parent) for p in shards]
        with (
            atomic_path(out_path, overwrite=overwrite) as tmp,
            h5py.File(tmp, "w", libver=("v110", "latest")) as out,
        ):
            for key, value in attrs.items():
                out.attrs[key] = _attr_value(value)
            first = files[0]
            for name in [
                "images",
                *(f"obs/{c}" for c in OBS_COLUMNS),
                *(f"latent/{c}" for c in LATENT_COLUMNS),
            ]:
                src = first[name]
                layout = h5py.VirtualLayout(shape=(total, *src.shape[1:]), dtype=src.dtype)
                row = 0
                for f, path, n in zip(files, rel, sizes, strict=True):
                    if n:
                        layout[row : row + n] = h5py.VirtualSource(path, name, shape=f[name].shape)
                    row += n
                out.create_virtual_dataset(name, layout)
                for key, value in src.attrs.items():
                    out[name].attrs[key] = value
            write_dataframe(out, "obs", columns=OBS_COLUMNS, index_column="index")  # AnnData's encoding


def relative_source(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder`` (how the master file names its shards)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())
