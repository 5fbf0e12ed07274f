"""A tiny synthesis run for the synthesis tests: a 16 px generator with random weights and
BatchNorm statistics (pixels far from trivial) saved as a run directory, the reference data set
written from it once per test module, and helpers to read and compare synthetic files.

Its fixtures (``run_dir``, ``category_map``, ``reference``) live in tests/conftest.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import torch

from infogan_cells.config import LatentSpec, SynthConfig
from infogan_cells.model.checkpoint import save_network
from infogan_cells.model.networks import Discriminator, Generator

SPEC = LatentSpec(z_dim=8, categorical=[4], n_continuous=2)
PRIOR = [0.1, 0.2, 0.3, 0.4]
CONFIG = SynthConfig(n=30, batch_size=16, micro_batch=8)
CATEGORY_MAP = "category,label,purity,size\n0,uninfected,0.9,10\n1,ring,0.8,5\n2,ring,0.7,5\n3,schizont,,2\n"


def randomise(net: torch.nn.Module, g: torch.Generator) -> None:
    """Weights and BatchNorm statistics drawn from ``g``: a deterministic, non-trivial network."""
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1 and name.endswith("weight"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


def make_run(folder: Path, *, channels: int = 3, meta: dict | None = None, snapshots: int = 0) -> Path:
    """The run; with ``snapshots``, that many more random generators kept as earlier snapshots."""
    g = torch.Generator().manual_seed(0)
    G = Generator(SPEC, img_size=16, channels=channels, width=8)
    D = Discriminator(SPEC, img_size=16, channels=channels, width=8)
    randomise(G, g)
    randomise(D, g)
    kept = []
    for _ in range(snapshots):
        other = Generator(SPEC, img_size=16, channels=channels, width=8)
        randomise(other, g)
        kept.append(other.state_dict())
    meta = {
        "channel_names": ["red", "green", "blue"][:channels],
        "category_prior": PRIOR,
        "img_size": 16,
        **(meta or {}),
    }
    save_network(folder / "network-final.pt", G=G, D=D, G_ema=G, meta=meta, snapshots=kept)
    return folder


def read_all(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {"images": f["images"][:]}
        for group in ("obs", "latent"):
            for name, d in f[group].items():
                out[f"{group}/{name}"] = d.asstr()[:] if name == "label" else d[:]
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
