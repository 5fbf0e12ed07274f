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
import collections
import contextlib
import dataclasses
import json
import logging
import os
import queue
import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from infogan_cells._io import atomic_path
from infogan_cells.data.h5ad import write_dataframe
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
        self._pool = (
            ThreadPoolExecutor(compression_threads(), thread_name_prefix="deflate") if self._deflate else None
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
        self._write_compressed(wait=len(self._compressing) > 2 * self._pool._max_workers)

    def _write_compressed(self, wait: bool) -> None:
        offsets = (0,) * (self._images.ndim - 1)
        while self._compressing and (wait or self._compressing[0][1].done()):
            row, future = self._compressing.popleft()
            self._images.id.write_direct_chunk((row, *offsets), future.result())
            wait = wait and len(self._compressing) > self._pool._max_workers

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


# --------------------------------------------------------------------------------------
# TIFF


@dataclasses.dataclass(frozen=True)
class StackPlan:
    """The pages of one category's stack: global sample indices and seeds, in page order."""

    category: int
    label: str
    index: np.ndarray
    seed: np.ndarray


def stack_name(category: int, label: str) -> str:
    """``category_03_ring`` (or ``category_03`` when the label is the default name)."""
    base = f"category_{category:02d}"
    if not label or label == base:
        return base
    return f"{base}_{safe_name(label)}"


def safe_name(text: str) -> str:
    """A label made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "unnamed"


def _tiff_layout(image_shape: Sequence[int]) -> tuple[str, str, tuple[int, ...]]:
    """ImageJ axes, photometric and the stored page shape for (H, W, C) images."""
    h, w, c = image_shape
    if c == 1:
        return "YX", "minisblack", (h, w)
    if c == 3:
        return "YXS", "rgb", (h, w, 3)
    return "CYX", "minisblack", (c, h, w)


def _stored(image: np.ndarray, axes: str) -> np.ndarray:
    if axes == "YX":
        return image[..., 0]
    if axes == "CYX":
        return np.moveaxis(image, -1, -3)
    return image


class TiffStackWriter(Writer):
    """One multi-page OME-TIFF per category, pages in sample order, plus ``<stack>.csv`` beside it.

    Each stack is ``TCYX``: the cells along ``T`` (page ``t`` is sample ``index[t]``; the CSV
    says which), every channel a named plane (RGB too: three channels ``R``, ``G``, ``B``), so
    ``bioio`` (with ``bioio-ome-tiff``), Fiji (Bio-Formats), napari and tifffile read the
    cells, the channel names and, when ``pixel_size_um`` is known, the physical pixel size from
    the OME XML. The ImageJ-side copy of the same facts: resolution tags in centimetres and an
    ``IJMetadata`` tag with a label per plane (index, seed, label, channel) and the data set's
    description as JSON in ``Info``. A stack past :attr:`CLASSIC_LIMIT` bytes is a BigTIFF. The
    pixels are stored uncompressed and contiguous, so they are written in place as batches arrive.
    """

    CLASSIC_LIMIT = (1 << 32) - (1 << 26)

    def __init__(
        self,
        tiff_dir: str | Path,
        stacks: Sequence[StackPlan],
        *,
        image_shape: Sequence[int],
        channel_names: Sequence[str],
        info: Mapping[str, Any],
        suffix: str = "",
        overwrite: bool = False,
        pixel_size_um: float | None = None,
    ):
        self.tiff_dir = Path(tiff_dir)
        self._files = _AtomicFiles()
        self._axes = "CYX"
        h, w, c = image_shape
        page_shape = (c, h, w)
        self._page_bytes = int(np.prod(page_shape))
        self._stacks = {int(s.category): s for s in stacks if len(s.index)}
        self._handles: dict[int, Any] = {}
        self._offset: dict[int, int] = {}
        self._done = dict.fromkeys(self._stacks, 0)
        self.paths: list[Path] = []
        try:
            for c, plan in self._stacks.items():
                path = self.tiff_dir / f"{stack_name(c, plan.label)}{suffix}.tif"
                tmp = self._files.add(path, overwrite=overwrite)
                csv_tmp = self._files.add(path.with_suffix(".csv"), overwrite=overwrite)
                self._offset[c] = self._create(tmp, plan, page_shape, channel_names, info, pixel_size_um)
                self._handles[c] = open(tmp, "r+b")  # noqa: SIM115  (closed in commit/abort)
                _write_stack_csv(csv_tmp, plan)
                self.paths.append(path)
        except BaseException:
            self.abort()
            raise

    def _create(
        self,
        tmp: Path,
        plan: StackPlan,
        page_shape: tuple[int, ...],
        channel_names: Sequence[str],
        info: Mapping[str, Any],
        pixel_size_um: float | None,
    ) -> int:
        import tifffile

        n = len(plan.index)
        shape = (n, *page_shape)
        description = {
            **info,
            "category": int(plan.category),
            "label": plan.label,
            "pages": n,
            "first_index": int(plan.index[0]),
            "last_index": int(plan.index[-1]),
            "pixel_size_um": pixel_size_um,
        }
        names = [str(ch) for ch in channel_names]
        labels = [
            f"{plan.label} #{i} seed {s} {ch}"
            for i, s in zip(plan.index.tolist(), plan.seed.tolist(), strict=True)
            for ch in names
        ]
        metadata: dict[str, Any] = {
            "axes": "TCYX",
            "Name": stack_name(plan.category, plan.label),
            "Description": json.dumps(description),
            "Channel": {"Name": names},
        }
        resolution = {}
        if pixel_size_um is not None:
            metadata.update(
                PhysicalSizeX=pixel_size_um,
                PhysicalSizeXUnit="µm",
                PhysicalSizeY=pixel_size_um,
                PhysicalSizeYUnit="µm",
            )
            resolution = {
                "resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um),
                "resolutionunit": "CENTIMETER",
            }
        ij_tags = tifffile.imagej_metadata_tag({"Labels": labels, "Info": json.dumps(description)}, "<")
        big = n * self._page_bytes + 64 * n * page_shape[0] >= self.CLASSIC_LIMIT
        offset, _ = tifffile.imwrite(
            tmp,
            shape=shape,
            dtype=np.uint8,
            photometric="minisblack",
            ome=True,
            bigtiff=big,
            metadata=metadata,
            extratags=ij_tags,
            returnoffset=True,
            byteorder="<",
            **resolution,
        )
        return int(offset)

    def write(self, batch: Batch) -> None:
        for row, (c, k) in enumerate(zip(batch.category.tolist(), batch.index.tolist(), strict=True)):
            plan = self._stacks[c]
            page = self._done[c]
            if page >= len(plan.index) or plan.index[page] != k:
                raise ValueError(
                    f"{self.tiff_dir}: sample {k} (category {c}) is not the next page of its stack"
                )
            fh = self._handles[c]
            fh.seek(self._offset[c] + page * self._page_bytes)
            fh.write(np.ascontiguousarray(_stored(batch.images[row], self._axes)).tobytes())
            self._done[c] = page + 1

    def commit(self) -> None:
        missing = {
            c: len(p.index) - self._done[c] for c, p in self._stacks.items() if self._done[c] != len(p.index)
        }
        if missing:
            raise RuntimeError(f"{self.tiff_dir}: stacks incomplete (pages missing per category: {missing})")
        for fh in self._handles.values():
            fh.close()
        self._files.commit()
        log.info("wrote %d TIFF stacks to %s", len(self.paths), self.tiff_dir)

    def abort(self) -> None:
        for fh in self._handles.values():
            with contextlib.suppress(Exception):
                fh.close()
        self._files.abort()


def _write_stack_csv(path: Path, plan: StackPlan) -> None:
    lines = ["page,index,seed,category,label"]
    label = '"' + plan.label.replace('"', '""') + '"'
    lines += [
        f"{p},{i},{s},{plan.category},{label}"
        for p, (i, s) in enumerate(zip(plan.index.tolist(), plan.seed.tolist(), strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")


def image_tiff_path(tiff_dir: str | Path, index: int, label: str) -> Path:
    """Where :class:`TiffImageWriter` puts sample ``index``: ``images/<label>/<index // 1000>/<index>.tif``."""
    return Path(tiff_dir) / "images" / safe_name(label) / f"{index // 1000:06d}" / f"{index:09d}.tif"


class TiffImageWriter(Writer):
    """One ImageJ TIFF per image (its index, seed, category and label in ``Info``; the pixel size
    as ImageJ's calibration when known), each atomic.

    Files are final as soon as they are written: a killed job leaves whole files only, and the
    rerun rewrites the same bytes. ``abort`` leaves the finished ones (they are correct).
    """

    def __init__(
        self,
        tiff_dir: str | Path,
        *,
        image_shape: Sequence[int],
        info: Mapping[str, Any],
        overwrite: bool = False,
        pixel_size_um: float | None = None,
    ):
        self.tiff_dir = Path(tiff_dir)
        self._axes, self._photometric, _ = _tiff_layout(image_shape)
        self._info = {**info, "pixel_size_um": pixel_size_um}
        # ImageJ's calibration: pixels per micrometre and the unit in its description
        self._scale = {} if pixel_size_um is None else {"resolution": (1 / pixel_size_um, 1 / pixel_size_um)}
        self._unit = {} if pixel_size_um is None else {"unit": "micron"}
        self._overwrite = overwrite
        self.n_written = 0

    def write(self, batch: Batch) -> None:
        import tifffile

        for row in range(len(batch)):
            k, label = int(batch.index[row]), str(batch.label[row])
            info = {
                **self._info,
                "index": k,
                "seed": int(batch.seed[row]),
                "category": int(batch.category[row]),
                "label": label,
            }
            with atomic_path(image_tiff_path(self.tiff_dir, k, label), overwrite=self._overwrite) as tmp:
                tifffile.imwrite(
                    tmp,
                    _stored(batch.images[row], self._axes),
                    photometric=self._photometric,
                    imagej=True,
                    metadata={"axes": self._axes, "Info": json.dumps(info), **self._unit},
                    **self._scale,
                )
            self.n_written += 1

    def commit(self) -> None:
        log.info("wrote %d single-image TIFFs under %s", self.n_written, self.tiff_dir / "images")

    def abort(self) -> None:
        pass


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
