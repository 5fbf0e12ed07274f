"""Train-on-synthetic figures of trained runs, each scored by several classifiers.

For each run directory (``network-final.pt`` with category names, i.e. a run whose crop store
carried labels) this draws ``--n-synthetic`` cells as synthesis does (from the EMA generator and
any kept earlier, ``train.generator_snapshots``) in equal shares of the
categories, labels each by its category's name, trains the analysis stage's small CNN on them
from each of ``--classifier-seeds`` seeds, and scores every classifier on a fixed random fifth of
the crop store's labelled crops (``--split-seed``): balanced accuracy (mean recall over classes).
One classifier is not enough: on one synthetic set of the simulated smears three classifiers
scored 0.80, 0.56 and 0.69.

    python benchmarks/teach_scores.py results/benchmarks/readme-run/simulated/crops.h5 \
        results/benchmarks/readme-run/simulated/seed0 results/benchmarks/readme-run/simulated/seed1

Prints one line per run: every classifier's figure, their mean and the per-class recall of the
first. With ``--pool`` the runs' generators draw one set together (``--n-synthetic`` in equal
parts), scored as one: an ensemble of generators from independently trained runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infogan_cells.analysis import quality  # noqa: E402
from infogan_cells.analysis.codes import generate  # noqa: E402
from infogan_cells.data.store import read_crop_store  # noqa: E402
from infogan_cells.model.checkpoint import load_generator  # noqa: E402
from infogan_cells.model.latent import sample_latent  # noqa: E402


def draw(run: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cells from a run's EMA generator(s) in equal shares of the categories, and their names."""
    G, spec, meta = load_generator(run, ema=True, snapshots=True)  # as synthesis draws
    names = np.asarray(meta.get("category_labels") or [], dtype=str)
    if len(names) != spec.categorical[0]:
        raise SystemExit(f"{run}: the run names {len(names)} of {spec.categorical[0]} categories")
    k = len(names)
    latent = sample_latent(
        spec, n, generator=torch.Generator().manual_seed(3), cat_probs=[torch.full((k,), 1.0 / k)]
    )
    return generate(G, spec, latent, torch.device("cpu")), names[latent.cat[:, 0].numpy()]


def score(runs: list[Path], images: np.ndarray, labels: np.ndarray, test: np.ndarray, args) -> dict:
    parts = [draw(run, args.n_synthetic // len(runs)) for run in runs]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    preds = [quality.cnn_predict(x, y, images[test], seed=s) for s in range(args.classifier_seeds)]
    balanced = [quality.balanced_accuracy(labels[test], p) for p in preds]
    recall = {c: float((preds[0][labels[test] == c] == c).mean()) for c in np.unique(labels[test])}
    return {"balanced": balanced, "mean": float(np.mean(balanced)), "recall_first": recall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("crops", type=Path, help="the crop store the runs trained on")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--n-synthetic", type=int, default=2000)
    p.add_argument("--classifier-seeds", type=int, default=3)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--pool",
        action="store_true",
        help="score the runs' cells pooled: --n-synthetic drawn in equal parts from every run, one set",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = read_crop_store(args.crops)
    labels = np.asarray(store.labels).astype(str)
    labelled = np.flatnonzero(labels != "")
    rng = np.random.default_rng(args.split_seed)
    test = rng.permutation(labelled)[: len(labelled) // 5]
    groups = [args.runs] if args.pool else [[run] for run in args.runs]
    for runs in groups:
        r = score(runs, store.images, labels, test, args)
        recall = ", ".join(f"{c} {v:.2f}" for c, v in r["recall_first"].items())
        name = f"pooled {' + '.join(map(str, runs))}" if args.pool else str(runs[0])
        print(
            f"{name}: balanced {' / '.join(f'{v:.3f}' for v in r['balanced'])}, mean {r['mean']:.3f} ({recall})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
