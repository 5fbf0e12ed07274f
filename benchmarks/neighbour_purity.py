"""How often a crop's nearest crops share its label: in pixels, and in a trained D's features.

The positives of ``train.pair_neighbours`` are only as good as this share. For a labelled crop store
it prints, per space and k, the share of each crop's k nearest crops with the crop's own label,
overall and per label; with ``--run`` also in that run's D features (the search the training loop
uses for ``pair_neighbours_refresh``).

    python benchmarks/neighbour_purity.py CROPS.h5 [--run RUN_DIR] [--k 5 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infogan_cells.data.store import read_crop_store  # noqa: E402
from infogan_cells.model.checkpoint import load_discriminator  # noqa: E402
from infogan_cells.training.neighbours import feature_neighbours, nearest_neighbours  # noqa: E402


def shares(neighbours: np.ndarray, labels: np.ndarray, k: int) -> pd.Series:
    """Per label, the mean share of a crop's k nearest crops that carry its label; 'all' overall."""
    same = (labels[neighbours[:, :k]] == labels[:, None]).mean(axis=1)
    per = pd.Series(same).groupby(labels).mean()
    return pd.concat([pd.Series({"all": same.mean()}), per]).round(3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crops", type=Path)
    ap.add_argument("--run", type=Path, help="a trained run (its D's features are searched too)")
    ap.add_argument("--k", type=int, nargs="+", default=[5, 50])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = read_crop_store(args.crops)
    keep = store.labels != ""
    labels = np.asarray(store.labels)[keep]
    images = torch.from_numpy(store.images[keep]).permute(0, 3, 1, 2).contiguous()
    spaces = {"pixels": nearest_neighbours(images, max(args.k)).numpy()}
    if args.run is not None:
        D, _, _ = load_discriminator(args.run)
        spaces["D features"] = feature_neighbours(D, images, max(args.k)).numpy()
    for name, nn in spaces.items():
        for k in args.k:
            print(f"{name}, k = {k}: {shares(nn, labels, k).to_dict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
