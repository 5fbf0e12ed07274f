"""Tiny training set-ups shared by the training tests: a 16-px config that trains in a fraction of
a second, and a crop store of drawn disks and squares (two labels, every third crop unlabelled)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.draw import disk, rectangle

from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig
from infogan_cells.data.store import write_crop_store

SPEC = LatentSpec(z_dim=4, categorical=[2], n_continuous=1)


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        latent=SPEC,
        total_images=96,
        batch_size=8,
        g_channels=4,
        d_channels=4,
        tick_images=32,
        snapshot_images=48,
        checkpoint_images=48,
        ema_beta=0.9,
        lambda_pair_mi=0.0,
        diff_augment=AugmentConfig(rot90=False, flip=False, shift=0),
        partial_labels=False,
    )  # the stores label 2 crops in 3: unsupervised unless a test asks
    base.update(kw)
    return TrainConfig(**base)


def make_store(path, n=24, size=16, channels=1, labels=("disk", "square"), qc_pass=None):
    """Disks and squares of random sizes, drawn with skimage.draw (label '' for every third crop)."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, channels), np.uint8)
    names = []
    for i in range(n):
        r = int(rng.integers(size // 5, size // 3))
        c = size // 2
        if i % 2:
            rr, cc = disk((c, c), r, shape=(size, size))
        else:
            rr, cc = rectangle((c - r, c - r), extent=(2 * r, 2 * r), shape=(size, size))
        images[i, rr, cc, :] = 200
        names.append("" if i % 3 == 2 or not labels else labels[i % 2])
    obs = pd.DataFrame(
        {
            "source_image": "synthetic",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": size,
            "max_col": size,
            "label": names,
            "qc_pass": np.ones(n, bool) if qc_pass is None else qc_pass,
            "qc_reason": "",
        }
    )
    write_crop_store(path, images, obs, [f"ch{i}" for i in range(channels)], csv=False)
    return path
