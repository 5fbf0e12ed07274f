"""A few labelled cells in, a labelled synthetic set out: does the synthetic set teach a classifier?

The common case a user brings: a folder where a small share of the cells sit in class sub-folders
and the rest lie loose. For each seed this script

1. builds such a folder from the 4,000 NIH cells (``../shared/data/nih_malaria_cell_images_4k``):
   ``--per-class`` cells of each class (drawn with ``--split-seed``) in ``Parasitized/`` and
   ``Uninfected/``, every other cell loose (symbolic links, nothing copied);
2. crops it and trains with ``config/nih_cells.yaml`` unchanged: the store holds some labels, so
   training is semi-supervised with no extra setting (``train.partial_labels``);
3. draws ``--n-synthetic`` cells from the EMA generator with the run's categorical prior, each
   labelled with its category's class (the names training tied to the categories);
4. trains one fixed classifier (the analysis stage's small CNN, classes balanced, 400 batches) on
   (a) the synthetic cells, (b) the labelled real cells alone, (c) both, and scores each on the
   loose cells, whose labels nothing above read: balanced accuracy (mean recall over classes) and
   accuracy, each the mean over ``--classifier-seeds`` such classifiers (seeds 0, 1, ...), as the
   analysis stage reports them.

``--reuse`` scores a seed's existing run (``<out>/seedN/network-final.pt``) instead of training it
again: new classifier figures for runs already trained.

    python benchmarks/few_labels.py --seeds 0 1 2 --threads 1 --out results/benchmarks/few-labels
    python benchmarks/few_labels.py --out results/benchmarks/few-labels --summarise
    python benchmarks/few_labels.py --seeds 0 1 2 --threads 1 --out results/benchmarks/few-labels --reuse
    python benchmarks/few_labels.py --seeds 0 1 2 --threads 1 --out results/benchmarks/few-labels --pool

``--pool`` trains and re-scores nothing: it draws ``--n-synthetic`` cells in equal parts from the
seeds' generators and scores the one classifier set on their union (``<out>/pooled.jsonl``).

Results: one JSON line per seed in ``<out>/results.jsonl`` and a mean +- sd table in
``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "nih_malaria_cell_images_4k"
sys.path.insert(0, str(REPO))

from infogan_cells.analysis.codes import generate  # noqa: E402
from infogan_cells.analysis.quality import cnn_seed_scores  # noqa: E402
from infogan_cells.config import load_config, parse_set_option  # noqa: E402
from infogan_cells.data.store import read_crop_store  # noqa: E402
from infogan_cells.model.checkpoint import load_generator  # noqa: E402
from infogan_cells.model.latent import sample_latent  # noqa: E402
from infogan_cells.preprocess.crop import crop  # noqa: E402
from infogan_cells.training.loop import train  # noqa: E402

log = logging.getLogger("few_labels")
PRESET = REPO / "config" / "nih_cells.yaml"


def build_folder(root: Path, per_class: int, split_seed: int) -> dict[str, str]:
    """The folder of step 1; returns each loose file's true label (by file name)."""
    table = pd.read_csv(SHARED / "labels.csv")
    rng = np.random.default_rng(split_seed)
    truth = {}
    root.mkdir(parents=True, exist_ok=True)
    for label, group in table.groupby("label"):
        files = group["file"].to_numpy()
        chosen = set(rng.choice(files, per_class, replace=False))
        (root / label).mkdir(exist_ok=True)
        for f in files:
            name = Path(f).name
            link = root / label / name if f in chosen else root / name
            if not link.exists():
                link.symlink_to(SHARED / f)
            if f not in chosen:
                truth[name] = label
    return truth


def loose_cells(store: Path, truth: dict[str, str]):
    """The crop store, its labelled crops (mask), the loose cells (mask) and their true labels."""
    cs = read_crop_store(store)
    names = np.array([Path(s).name for s in cs.obs["source_image"].astype(str)])
    labelled = cs.labels != ""
    loose = ~labelled & np.isin(names, list(truth))
    return cs, labelled, loose, np.array([truth[n] for n in names[loose]])


def synthetic_cells(run_dir: Path, n: int, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` cells drawn from a run's EMA generator(s) with its categorical prior, less those of
    categories no label named: (images, labels, every category's label)."""
    G, spec, meta = load_generator(run_dir, ema=True, snapshots=True)  # as synthesis draws
    named = list(meta.get("category_labels") or [])  # categories 0..n-1 carry the n classes' names
    cat_labels = np.asarray(named + [""] * (spec.categorical[0] - len(named)), dtype=str)
    prior = meta.get("category_prior")
    latent = sample_latent(
        spec,
        n,
        generator=torch.Generator().manual_seed(1),
        cat_probs=[torch.as_tensor(prior[0])] if prior else None,
    )
    syn = generate(G, spec, latent, torch.device("cpu"))
    y_syn = cat_labels[latent.cat[:, 0].numpy()]
    known = np.isin(y_syn, classes)
    return syn[known], y_syn[known], cat_labels


def score_pool(
    out: Path, store: Path, truth: dict[str, str], seeds: list[int], n_synthetic: int, classifier_seeds: int
) -> dict:
    """Train-on-synthetic of the seeds' runs pooled: ``n_synthetic / len(seeds)`` cells from each."""
    cs, labelled, loose, y_loose = loose_cells(store, truth)
    classes = np.unique(cs.labels[labelled])
    parts = [synthetic_cells(out / f"seed{s}", n_synthetic // len(seeds), classes)[:2] for s in seeds]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    scores = cnn_seed_scores(x, y, cs.images[loose], y_loose, seeds=classifier_seeds)
    b = scores["balanced_accuracy"]
    return {
        "pooled_seeds": seeds,
        "n_synthetic": len(x),
        "synthetic_balanced": float(np.mean(b)),
        "synthetic_balanced_seeds": b,
    }


def run_seed(
    seed: int,
    store: Path,
    truth: dict[str, str],
    out: Path,
    overrides,
    n_synthetic: int,
    *,
    classifier_seeds: int = 3,
    reuse: bool = False,
) -> dict:
    cfg = load_config(PRESET, overrides)
    run_dir = out / f"seed{seed}"
    train_s = None
    if reuse and (run_dir / "network-final.pt").exists():
        log.info("seed %d: scoring the trained run in %s", seed, run_dir)
    else:
        t0 = time.perf_counter()
        train(store, run_dir, cfg.train, seed=seed, device="cpu", resolved_config=cfg)
        train_s = round(time.perf_counter() - t0, 1)
    cs, labelled, loose, y_loose = loose_cells(store, truth)
    syn, y_syn, cat_labels = synthetic_cells(run_dir, n_synthetic, np.unique(cs.labels[labelled]))

    x_lab, y_lab = cs.images[labelled], cs.labels[labelled]
    sets = {
        "synthetic": (syn, y_syn, None),
        "labelled": (x_lab, y_lab, None),
        "labelled+synthetic": (
            np.concatenate([x_lab, syn]),
            np.concatenate([y_lab, y_syn]),
            np.repeat([0, 1], [len(x_lab), len(syn)]),
        ),
    }
    row = {
        "seed": seed,
        "n_labelled": int(labelled.sum()),
        "n_test": int(loose.sum()),
        "n_synthetic": len(syn),
        "category_labels": cat_labels.tolist(),
        "train_s": train_s,
        "classifier_seeds": classifier_seeds,
    }
    for name, (x, y, groups) in sets.items():
        scores = cnn_seed_scores(x, y, cs.images[loose], y_loose, seeds=classifier_seeds, groups=groups)
        if scores is None:
            row[f"{name}_balanced"] = row[f"{name}_accuracy"] = None
            continue
        row[f"{name}_balanced"] = float(np.mean(scores["balanced_accuracy"]))
        row[f"{name}_balanced_seeds"] = scores["balanced_accuracy"]
        row[f"{name}_accuracy"] = float(np.mean(scores["accuracy"]))
    log.info("%s", row)
    return row


def summarise(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    lines = [
        "| trained on | seeds | balanced accuracy on the loose cells | accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("synthetic", "labelled", "labelled+synthetic"):
        b, a = df[f"{name}_balanced"].astype(float), df[f"{name}_accuracy"].astype(float)
        lines.append(
            f"| {name} | {len(df)} | {b.mean():.3f} ± {b.std(ddof=1) if len(df) > 1 else 0:.3f} "
            f"({' / '.join(f'{v:.3f}' for v in b)}) | {a.mean():.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--per-class", type=int, default=50, help="labelled cells per class (default 50: 5%%)")
    p.add_argument("--split-seed", type=int, default=0, help="which cells are labelled")
    p.add_argument("--n-synthetic", type=int, default=2000)
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "few-labels")
    p.add_argument("--set", action="append", default=[], dest="set_", metavar="KEY=VALUE")
    p.add_argument("--threads", type=int)
    p.add_argument("--summarise", action="store_true")
    p.add_argument("--classifier-seeds", type=int, default=3, help="classifiers per figure (their mean)")
    p.add_argument("--reuse", action="store_true", help="score existing runs instead of training them")
    p.add_argument(
        "--pool",
        action="store_true",
        help="train nothing: score the seeds' trained runs' synthetic cells pooled (pooled.jsonl)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = args.out / "results.jsonl"
    if not args.summarise:
        if not SHARED.exists():
            log.error("%s not found: nothing to measure", SHARED)
            return 1
        if args.threads:
            torch.set_num_threads(args.threads)
        overrides = [parse_set_option(s) for s in args.set_]
        truth = build_folder(args.out / "cells", args.per_class, args.split_seed)
        store = args.out / "crops.h5"
        if args.pool:
            missing = [s for s in args.seeds if not (args.out / f"seed{s}" / "network-final.pt").exists()]
            if missing or not store.exists():
                log.error("--pool: no crop store or trained run for seed(s) %s in %s", missing, args.out)
                return 1
            row = score_pool(args.out, store, truth, args.seeds, args.n_synthetic, args.classifier_seeds)
            with (args.out / "pooled.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            b = row["synthetic_balanced_seeds"]
            print(
                f"pooled seeds {args.seeds}: balanced {' / '.join(f'{v:.3f}' for v in b)}, mean {np.mean(b):.3f}"
            )
            return 0
        if not store.exists():
            cfg = load_config(PRESET, overrides)
            crop(str(args.out / "cells"), store, cfg.input, cfg.crop, montages=False)
        for seed in args.seeds:
            row = run_seed(
                seed,
                store,
                truth,
                args.out,
                overrides,
                args.n_synthetic,
                classifier_seeds=args.classifier_seeds,
                reuse=args.reuse,
            )
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    text = summarise(rows)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
