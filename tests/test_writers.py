"""Writers: the HDF5 and TIFF layouts, atomic commit and abort, the background thread."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from infogan_cells.errors import InputError
from infogan_cells.synthesis.hdf5 import HDF5Writer
from infogan_cells.synthesis.tiff import (
    StackPlan,
    TiffImageWriter,
    TiffStackWriter,
    image_tiff_path,
    stack_name,
)
from infogan_cells.synthesis.writers import BackgroundWriter, Batch, MultiWriter, Writer

SHAPE = (8, 8, 3)


def batch(offset: int, n: int, *, shape=SHAPE, categories: int = 2) -> Batch:
    index = np.arange(offset, offset + n, dtype=np.int64)
    rng = np.random.default_rng(offset)
    category = index % categories
    return Batch(
        offset=offset,
        images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        index=index,
        seed=index + 100,
        category=category,
        label=np.array([f"label {c}" for c in category], dtype=object),
        z=rng.standard_normal((n, 4)).astype(np.float32),
        categorical=category[:, None],
        continuous=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
    )


def hdf5_writer(path: Path, n: int, **kwargs) -> HDF5Writer:
    return HDF5Writer(
        path,
        n=n,
        image_shape=SHAPE,
        channel_names=["r", "g", "b"],
        z_dim=4,
        n_codes=1,
        n_continuous=2,
        attrs={"format": "test", "config": {"n": n}, "note": None},
        **kwargs,
    )


def test_hdf5_layout_and_round_trip(tmp_path):
    path = tmp_path / "out.h5"
    batches = [batch(0, 16), batch(16, 16), batch(32, 5)]
    with hdf5_writer(path, 37) as w:
        for b in batches:
            assert not path.exists()  # only complete files appear
            w.write(b)
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    with h5py.File(path, "r") as f:
        images = f["images"]
        assert images.shape == (37, *SHAPE) and images.dtype == np.uint8
        assert images.chunks[1:] == SHAPE and 1 <= images.chunks[0] <= 37
        assert images.compression == "gzip"
        assert images.attrs["axes"] == "NYXC" and list(images.attrs["channel_names"]) == ["r", "g", "b"]
        np.testing.assert_array_equal(images[:], np.concatenate([b.images for b in batches]))
        np.testing.assert_array_equal(f["obs/seed"][:], np.arange(37) + 100)
        assert list(f["obs/label"].asstr()[:3]) == ["label 0", "label 1", "label 0"]
        np.testing.assert_array_equal(
            f["latent/continuous"][:], np.concatenate([b.continuous for b in batches])
        )
        assert json.loads(f.attrs["config"]) == {"n": 37} and f.attrs["note"] == "null"


@pytest.mark.parametrize("compression", ["lzf", "none", "blosc"])
def test_other_compressions_round_trip(tmp_path, compression):
    b = batch(0, 10)
    with hdf5_writer(tmp_path / "out.h5", 10, compression=compression) as w:
        w.write(b)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["images"][:], b.images)  # blosc: the reader registers the filter


def test_a_failed_write_removes_the_temporary_file(tmp_path):
    with pytest.raises(ValueError, match="out of order"), hdf5_writer(tmp_path / "out.h5", 10) as w:
        w.write(batch(0, 4))
        w.write(batch(5, 4))  # skips row 4
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_file_is_not_committed(tmp_path):
    with pytest.raises(RuntimeError, match="4 of 10 rows written"), hdf5_writer(tmp_path / "out.h5", 10) as w:
        w.write(batch(0, 4))
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "out.h5").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        hdf5_writer(tmp_path / "out.h5", 4)
    with hdf5_writer(tmp_path / "out.h5", 4, overwrite=True) as w:
        w.write(batch(0, 4))
    assert h5py.is_hdf5(tmp_path / "out.h5")


def plans(batches: list[Batch]) -> list[StackPlan]:
    index = np.concatenate([b.index for b in batches])
    category = np.concatenate([b.category for b in batches])
    return [StackPlan(c, f"label {c}", index[category == c], index[category == c] + 100) for c in (0, 1)]


@pytest.mark.parametrize("channels", [3, 1, 2])
def test_tiff_stacks_are_ome_tiffs_with_cells_along_t(tmp_path, channels):
    shape = (8, 8, channels)
    batches = [batch(0, 5, shape=shape), batch(5, 4, shape=shape)]
    names = ["a", "b", "c"][:channels]
    with TiffStackWriter(
        tmp_path, plans(batches), image_shape=shape, channel_names=names, info={"model_sha256": "x"}
    ) as w:
        for b in batches:
            w.write(b)
    images = np.concatenate([b.images for b in batches])
    category = np.concatenate([b.category for b in batches])
    for c in (0, 1):
        path = tmp_path / f"{stack_name(c, f'label {c}')}.tif"
        assert path.name == f"category_0{c}_label-{c}.tif"
        with tifffile.TiffFile(path) as tif:
            # tifffile leaves out an axis of length one (C of a one-channel stack)
            assert (
                tif.is_ome
                and not tif.is_bigtiff
                and tif.series[0].axes == ("TYX" if channels == 1 else "TCYX")
            )
            expected = np.moveaxis(images[category == c], -1, 1)
            np.testing.assert_array_equal(tif.asarray().reshape(expected.shape), expected)
            ij = tif.pages[0].tags["IJMetadata"].value
            assert ij["Labels"][0] == f"label {c} #{c} seed {100 + c} a"
            assert json.loads(ij["Info"])["category"] == c
            assert "PhysicalSizeX" not in tif.ome_metadata  # unknown, so not claimed
        assert path.with_suffix(".csv").read_text().splitlines()[1] == f'0,{c},{100 + c},{c},"label {c}"'


def test_a_stack_past_4_gb_becomes_an_ome_bigtiff(tmp_path, monkeypatch):
    monkeypatch.setattr(TiffStackWriter, "CLASSIC_LIMIT", 100)
    b = batch(0, 6)
    with TiffStackWriter(tmp_path, plans([b]), image_shape=SHAPE, channel_names="rgb", info={}) as w:
        w.write(b)
    with tifffile.TiffFile(tmp_path / "category_00_label-0.tif") as tif:
        assert tif.is_ome and tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), np.moveaxis(b.images[b.category == 0], -1, 1))


def test_tiff_stacks_refuse_pages_out_of_order_and_leave_nothing(tmp_path):
    b = batch(0, 6)
    with (
        pytest.raises(ValueError, match="not the next page"),
        TiffStackWriter(tmp_path, plans([b]), image_shape=SHAPE, channel_names="rgb", info={}) as w,
    ):
        w.write(batch(2, 4))
    assert list(tmp_path.iterdir()) == []


def test_single_image_tiffs(tmp_path):
    b = batch(998, 4)
    with TiffImageWriter(tmp_path, image_shape=SHAPE, info={"model_sha256": "x"}) as w:
        w.write(b)
    path = image_tiff_path(tmp_path, 1000, "label 0")
    assert path.relative_to(tmp_path).as_posix() == "images/label-0/000001/000001000.tif"
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.asarray(), b.images[2])
        assert json.loads(tif.imagej_metadata["Info"])["seed"] == 1100


class Slow(Writer):
    """Records what it got; can be slow, or fail at a given batch."""

    def __init__(self, *, delay: float = 0.0, fail_at: int | None = None):
        self.got, self.delay, self.fail_at = [], delay, fail_at
        self.committed = self.aborted = False
        self.thread = None

    def write(self, batch):
        self.thread = threading.current_thread()
        if self.fail_at == len(self.got):
            raise OSError("no space left (injected)")
        time.sleep(self.delay)
        self.got.append(batch.offset)

    def commit(self):
        self.committed = True

    def abort(self):
        self.aborted = True


def test_background_writer_writes_in_order_on_another_thread_with_a_bounded_queue():
    inner = Slow(delay=0.01)
    with BackgroundWriter(inner, maxsize=2) as w:
        for i in range(10):
            w.write(batch(i, 1))
            assert w._queue.qsize() <= 2
    assert inner.got == list(range(10)) and inner.committed and not inner.aborted
    assert inner.thread is not threading.current_thread()


def test_background_writer_raises_the_threads_error_and_aborts():
    inner = Slow(fail_at=3)
    with pytest.raises(OSError, match="no space left"), BackgroundWriter(inner, maxsize=1) as w:
        for i in range(50):
            w.write(batch(i, 1))
    assert inner.aborted and not inner.committed
    assert inner.got == [0, 1, 2]


def test_multi_writer_aborts_the_rest_when_one_commit_fails():
    class FailingCommit(Slow):
        def commit(self):
            raise OSError("rename failed (injected)")

    first, second, third = Slow(), FailingCommit(), Slow()
    with pytest.raises(OSError, match="rename failed"), MultiWriter([first, second, third]) as w:
        w.write(batch(0, 1))
    assert first.committed and second.aborted and third.aborted and not third.committed
