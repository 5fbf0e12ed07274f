"""What lets synthesis keep a GPU busy, checked for correctness on the CPU: gzip chunks compressed
on several threads and written whole, and per-sample latents drawn without a Python call per sample."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from infogan_cells.config import LatentSpec
from infogan_cells.model.latent import sample_latent_by_seed, seed_uniforms
from infogan_cells.synthesis.hdf5 import HDF5Writer
from infogan_cells.synthesis.writers import Batch, chunk_images, compression_threads


def batches(n: int, sizes: list[int], shape=(16, 16, 3)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 8, (n, *shape), dtype=np.uint8)  # compressible, not constant
    images[:, 4:8] = 200
    out, a = [], 0
    for size in sizes:
        b = min(n, a + size)
        index = np.arange(a, b)
        out.append(
            Batch(
                offset=a,
                images=images[a:b],
                index=index,
                seed=index,
                category=index % 3,
                label=np.array([str(c) for c in index % 3], dtype=object),
                z=np.zeros((b - a, 2), np.float32),
                categorical=(index % 3)[:, None],
                continuous=np.zeros((b - a, 1), np.float32),
            )
        )
        a = b
    assert a == n
    return images, out


def write(path, n: int, images: np.ndarray, parts) -> None:
    """Write ``parts`` into an ``n``-row gzip HDF5 file (committed on success, aborted on an error)."""
    sizes = dict(n=n, image_shape=images.shape[1:], channel_names=["r", "g", "b"])
    latent = dict(z_dim=2, n_codes=1, n_continuous=1)
    with HDF5Writer(path, **sizes, **latent, attrs={}, compression="gzip") as writer:
        for part in parts:
            writer.write(part)


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize(
    "sizes", [[1000], [7, 300, 1, 511, 181], [64] * 15 + [40]], ids=["one", "odd", "chunky"]
)
def test_threaded_gzip_writes_the_same_images_whatever_the_batches(tmp_path, monkeypatch, threads, sizes):
    monkeypatch.setenv("INFOGAN_CELLS_COMPRESSION_THREADS", threads)
    assert compression_threads() == int(threads)
    images, parts = batches(1000, sizes)
    path = tmp_path / "synth.h5"
    write(path, 1000, images, parts)
    with h5py.File(path, "r") as f:
        ds = f["images"]
        assert ds.compression == "gzip" and ds.chunks[0] == chunk_images(images.shape[1:], 1000)
        assert np.array_equal(ds[...], images)
        assert np.array_equal(ds[990:1000], images[990:1000])  # the padded last chunk reads back cut
        assert ds.id.get_storage_size() < images.nbytes / 2  # really compressed (3 bits of 8 vary)
        assert np.array_equal(f["obs/index"][...], np.arange(1000))


def test_an_aborted_threaded_writer_leaves_nothing(tmp_path):
    images, parts = batches(200, [50, 50, 100])
    path = tmp_path / "synth.h5"
    with pytest.raises(RuntimeError, match="100 of 200"):
        write(path, 200, images, parts[:2])
    assert list(tmp_path.iterdir()) == []


def test_seed_streams_depend_on_the_seed_and_position_alone():
    u = seed_uniforms(np.array([3, 9, 3]), 5)
    assert u.shape == (3, 5) and np.array_equal(u[0], u[2]) and not np.array_equal(u[0], u[1])
    assert np.array_equal(seed_uniforms(np.array([9]), 8)[0, :5], u[1])  # a longer stream extends it
    assert ((u > 0) & (u < 1)).all()
    with pytest.raises(ValueError):
        seed_uniforms(np.array([-1]), 2)


def test_latents_by_seed_have_the_prior_distribution():
    spec = LatentSpec(z_dim=5, categorical=[4, 3], n_continuous=2, continuous_range=2.0)
    lat = sample_latent_by_seed(spec, np.arange(200_000))
    z = lat.z.double()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    corr = torch.corrcoef(z.T)
    assert (corr - torch.eye(5)).abs().max() < 0.01  # the coordinates are independent
    for j, k in enumerate(spec.categorical):
        counts = torch.bincount(lat.cat[:, j], minlength=k).double()
        chi2 = ((counts - 200_000 / k) ** 2 / (200_000 / k)).sum()
        assert chi2 < 30  # p ~ 1e-6 at 3 degrees of freedom
    assert lat.cont.min() >= -2 and lat.cont.max() <= 2 and abs(lat.cont.double().mean()) < 0.02
    skewed = sample_latent_by_seed(
        spec, np.arange(50_000), cat_probs=[torch.tensor([0.7, 0.1, 0.1, 0.1]), None]
    )
    assert abs((skewed.cat[:, 0] == 0).double().mean() - 0.7) < 0.01
    assert torch.equal(skewed.z, lat.z[:50_000])  # the prior changes the category draw only
    truncated = sample_latent_by_seed(spec, np.arange(10), truncation=0.5)
    assert torch.allclose(truncated.z, lat.z[:10] * 0.5)
