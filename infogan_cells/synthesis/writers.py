"""Writers of synthetic cells: one interface, with HDF5 and TIFF behind it.

A :class:`Writer` takes :class:`Batch` es (images with their labels and latent codes) in
order, then either commits (every file it makes appears under its final name) or aborts
(nothing appears; temporary files are removed). Used as a context manager it commits on
success and aborts on an exception. Behind the interface:

* :class:`HDF5Writer`: one ``synth.h5`` file (layout in ``docs/hdf5.md``), pre-sized and
  chunked by whole images, written batch by batch, so memory stays flat as N grows; gzip
  chunks are compressed on several threads and written whole (``write_direct_chunk``);
* :class:`TiffStackWriter`: one multi-page OME-TIFF per category (cells along ``T``, named
  channels, physical pixel size; BigTIFF past 4 GB) with a label per page and a CSV beside it;
* :class:`TiffImageWriter`: one small TIFF per image, in folders of at most 1000;
* :class:`MultiWriter` writes to several; :class:`BackgroundWriter` moves any writer onto a
  thread behind a bounded queue, so generation and writing overlap.

:func:`write_master` joins shard files with HDF5 virtual datasets, copying nothing.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infogan_cells._io import atomic_path
from infogan_cells.errors import InputError

log = logging.getLogger(__name__)

FORMAT = "infogan-cells/synthetic"
FORMAT_VERSION = 2  # 2: obs/confidence, and obs/seed may be a later draw (min_confidence)

#: obs columns, in this order: global sample index, its seed, category (of the first
#: categorical code), the category's label name and Q's probability of that category.
OBS_COLUMNS = ("index", "seed", "category", "label", "confidence")
#: Draw ``j`` of sample ``k`` has seed ``config.seed + k + j * DRAW_STRIDE`` (more than one draw
#: only with ``synthesis.min_confidence``): no data set of fewer than 2^32 samples reuses a seed,
#: and the seeds do not depend on the data set's size. At most MAX_DRAWS draws per sample.
DRAW_STRIDE = 1 << 32
MAX_DRAWS = 100
#: latent datasets: noise z, every categorical code, continuous codes.
LATENT_COLUMNS = ("z", "categorical", "continuous")

CHUNK_BYTES = 1 << 18  # ~256 KiB of images per chunk: cheap random reads, decent compression


def load_hdf5_plugins() -> bool:
    """Register the Blosc filter (hdf5plugin) when installed; True if it is."""
    try:
        import hdf5plugin  # noqa: F401  (registers its filters with HDF5 on import)
    except ImportError:
        return False
    return True


#: gzip level of synthetic images.
GZIP_LEVEL = 1


def compression_threads() -> int:
    """Threads that compress gzip chunks: ``INFOGAN_CELLS_COMPRESSION_THREADS``, else the CPUs
    this process may use (at most 16)."""
    env = os.environ.get("INFOGAN_CELLS_COMPRESSION_THREADS", "")
    if env.strip():
        try:
            return max(1, int(env))
        except ValueError:
            raise InputError(f"INFOGAN_CELLS_COMPRESSION_THREADS={env!r}: expected a whole number") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus))


def compression_options(name: str) -> dict:
    """``create_dataset`` keywords for a ``SynthConfig.compression`` name."""
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL}
    if name == "lzf":
        return {"compression": "lzf"}
    if name == "none":
        return {}
    if name == "blosc":
        if not load_hdf5_plugins():
            raise InputError(
                "compression 'blosc' needs the hdf5plugin package "
                "(pip install 'infogan-cells[blosc]'), or choose gzip or lzf"
            )
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"unknown compression {name!r}")


def chunk_images(image_shape: Sequence[int], n: int) -> int:
    """Images per chunk: about :data:`CHUNK_BYTES`, at least 1, at most ``n``."""
    return int(max(1, min(max(n, 1), CHUNK_BYTES // int(np.prod(image_shape)))))


@dataclasses.dataclass
class Batch:
    """Consecutive samples: rows ``offset .. offset + len`` of the file being written.

    images : (B, H, W, C) uint8; index, seed, category : (B,) int64; label : (B,) str;
    z : (B, z_dim) float32; categorical : (B, n_codes) int64; continuous : (B, n_continuous) float32;
    confidence : (B,) float32, Q's probability of the sample's category (NaN where not known).
    """

    offset: int
    images: np.ndarray
    index: np.ndarray
    seed: np.ndarray
    category: np.ndarray
    label: np.ndarray
    z: np.ndarray
    categorical: np.ndarray
    continuous: np.ndarray
    confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)


# --------------------------------------------------------------------------------------
# The interface


class Writer(abc.ABC):
    """Takes batches in order; ``commit`` makes the outputs appear, ``abort`` removes them."""

    @abc.abstractmethod
    def write(self, batch: Batch) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove everything written so far; safe to call twice and after a failed commit."""

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


class _Aborted(Exception):
    """Handed to ``atomic_path`` so that it removes its temporary file."""


class _AtomicFiles:
    """Temporary paths that become their final names together on ``commit``."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._open = True

    def add(self, path: Path, *, overwrite: bool) -> Path:
        return self._stack.enter_context(atomic_path(path, overwrite=overwrite))

    def commit(self) -> None:
        if self._open:
            self._open = False
            self._stack.close()

    def abort(self) -> None:
        if self._open:
            self._open = False
            err = _Aborted()
            self._stack.__exit__(_Aborted, err, None)


# --------------------------------------------------------------------------------------
# Composition


class MultiWriter(Writer):
    """Several writers fed the same batches; committed in order (put the HDF5 file last)."""

    def __init__(self, writers: Sequence[Writer]):
        self.writers = list(writers)

    def write(self, batch: Batch) -> None:
        for w in self.writers:
            w.write(batch)

    def commit(self) -> None:
        for i, w in enumerate(self.writers):
            try:
                w.commit()
            except BaseException:
                for rest in self.writers[i:]:
                    rest.abort()
                raise

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


_STOP = object()


class BackgroundWriter(Writer):
    """Runs ``writer.write`` on a thread behind a queue of at most ``maxsize`` batches.

    ``write`` blocks while the queue is full, so memory stays bounded when writing is the slow
    side. An error on the thread is raised by the next ``write`` or by ``commit``.
    """

    def __init__(self, writer: Writer, *, maxsize: int = 4):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="synthesis-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            if self._error is None:  # after an error, drain the queue so write() never blocks
                try:
                    self.writer.write(batch)
                except BaseException as err:
                    self._error = err

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, batch: Batch) -> None:
        while True:
            self._check()
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def commit(self) -> None:
        self._stop()
        self._check()
        self.writer.commit()

    def abort(self) -> None:
        self._stop()
        self.writer.abort()
