"""Does InfoGAN's categorical code find the classes? Agreement with known labels, beside k-means.

For each data set and seed: build a crop store (once), train with the data set's preset for the
preset's fixed budget (``train.total_images``) on the CPU, assign every labelled crop to Q's most
likely category, and score the assignment against the true classes: accuracy after Hungarian
matching, NMI, ARI, and purity (many-to-one). k-means on the same pixels (as many clusters as
classes, and as many as InfoGAN categories) runs in the same process as the baseline.

Data sets (``--datasets``):

* ``digits``     scikit-learn's bundled 8x8 digits (1,797), upsampled to 32 px; preset config/digits.yaml
* ``simulated``  the smear simulator + crop stage with config/config.yaml (64 px), trained with
                 config/config.yaml too (the default pipeline)
* ``jurkat``     ../shared/data/jurkat_ifc_cellcycle/cells.npz (1,709 cells, 3 channels, 40 -> 32 px);
                 preset config/ifc_npz.yaml
* ``nih``        ../shared/data/nih_malaria_cell_images (400 crops, 2 classes, padded square -> 64 px);
                 preset config/nih_cells.yaml
* ``nih4k``      ../shared/data/nih_malaria_cell_images_4k (4,000 crops) through the crop stage with
                 config/nih_cells.yaml (its preprocessing counts)
* ``mnist6k``    ../shared/data/mnist_train6k (6,112 MNIST digits, 28 -> 32 px) through the crop stage
                 with config/digits.yaml

Stores for the real sets are built straight from the arrays/folders (per-set percentile scaling to
uint8, resize), so the figures do not move when the crop stage changes; ``simulated``, ``nih4k`` and
``mnist6k`` go through the crop stage with their preset, as a user's run does.

    python benchmarks/clustering_agreement.py --datasets digits --seeds 0 1 2 --threads 1
    python benchmarks/clustering_agreement.py --datasets jurkat nih simulated --seeds 0 1 2
    python benchmarks/clustering_agreement.py --datasets nih --seeds 0 1 2 --analyse \
        --set train.supervised_fraction=0.05      # semi-supervised; adds TSTR / TRTR from the analysis stage
    python benchmarks/clustering_agreement.py --out DIR --summarise   # the table of DIR/results.jsonl

With several seeds the table also shows the seed the workflow would keep: the one with the highest
label-free information score (infogan_cells.analysis.seeds), scored on all crops.

Results: one JSON line per (data set, seed, method) in ``<out>/results.jsonl`` and a mean +- sd
table in ``<out>/summary.md`` (also printed).
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
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from infogan_cells.analysis.clustering import agreement  # noqa: E402
from infogan_cells.analysis.codes import assign_with_q  # noqa: E402
from infogan_cells.analysis.seeds import information_score  # noqa: E402
from infogan_cells.config import load_config, parse_set_option  # noqa: E402
from infogan_cells.data.store import read_crop_store, write_crop_store  # noqa: E402
from infogan_cells.model.checkpoint import load_discriminator  # noqa: E402
from infogan_cells.training.loop import train  # noqa: E402

log = logging.getLogger("clustering_agreement")

PRESETS = {
    "digits": "digits.yaml",
    "simulated": "config.yaml",
    "jurkat": "ifc_npz.yaml",
    "nih": "nih_cells.yaml",
    "nih4k": "nih_cells.yaml",
    "mnist6k": "digits.yaml",
}


# --------------------------------------------------------------------------------------
# Crop stores


def _obs(labels) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "source_image": "benchmark",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": 0,
            "max_col": 0,
            "label": list(labels),
            "qc_pass": np.ones(n, bool),
            "qc_reason": "",
        }
    )


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) float -> (N, C, size, size) float, antialiased when shrinking."""
    x = torch.from_numpy(images.astype(np.float32))
    shrink = x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink).numpy()


def _uint8(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((x - lo) / np.maximum(hi - lo, 1e-9) * 255), 0, 255).astype(np.uint8)


def build_digits(path: Path) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _resize(d.images[:, None] / 16.0, 32)
    images = _uint8(x, 0.0, 1.0).transpose(0, 2, 3, 1)
    write_crop_store(path, images, _obs([str(t) for t in d.target]), ["grey"], csv=False)
    return path


def build_jurkat(path: Path, size: int = 32) -> Path:
    z = np.load(SHARED / "jurkat_ifc_cellcycle" / "cells.npz")
    x = _resize(z["images"].astype(np.float32), size)
    lo = np.percentile(x, 0.5, axis=(0, 2, 3))[None, :, None, None]
    hi = np.percentile(x, 99.5, axis=(0, 2, 3))[None, :, None, None]
    images = _uint8(x, lo, hi).transpose(0, 2, 3, 1)
    labels = [str(z["class_names"][i]) for i in z["labels"]]
    write_crop_store(path, images, _obs(labels), [str(c) for c in z["channel_names"]], csv=False)
    return path


def build_nih(path: Path, size: int = 64) -> Path:
    from PIL import Image

    root = SHARED / "nih_malaria_cell_images"
    table = pd.read_csv(root / "labels.csv")
    images = []
    for f in table["file"]:
        with Image.open(root / f) as im:
            a = np.asarray(im.convert("RGB"), np.float32)
        h, w, _ = a.shape
        s = max(h, w)  # pad to a square with the black background, then resize
        sq = np.zeros((s, s, 3), np.float32)
        sq[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = a
        images.append(_resize(sq.transpose(2, 0, 1)[None], size)[0])
    x = np.stack(images)
    images = _uint8(x, 0.0, 255.0).transpose(0, 2, 3, 1)
    write_crop_store(path, images, _obs(table["label"].astype(str)), ["R", "G", "B"], csv=False)
    return path


def build_simulated(path: Path, overrides: list[dict] = ()) -> Path:
    """The simulator + crop stage with config/config.yaml (and the ``--set`` overrides: crop.* and
    simulate.* keys change the store; use a new --out for each such change)."""
    try:
        from infogan_cells.data.simulate import simulate_smears
        from infogan_cells.preprocess.crop import crop
    except ImportError as err:
        raise RuntimeError(f"simulator or crop stage not available yet ({err})") from None
    cfg = load_config(REPO / "config" / "config.yaml", list(overrides))
    js = simulate_smears(path.parent / "smears", cfg.simulate)
    crop(str(js), path, cfg.input, cfg.crop)
    return path


def _build_with_preset(path: Path, dataset: str, source: Path, overrides: list[dict] = ()) -> Path:
    """The crop stage on ``source`` with the data set's preset (and the ``--set`` overrides), as a
    user's run would read it: the preset's own preprocessing counts in the figures."""
    from infogan_cells.preprocess.crop import crop

    if not source.exists():
        raise FileNotFoundError(f"{source} not found")
    cfg = load_config(REPO / "config" / PRESETS[dataset], list(overrides))
    crop(str(source), path, cfg.input, cfg.crop, montages=False)
    return path


def build_nih4k(path: Path, overrides: list[dict] = ()) -> Path:
    """The 4,000 NIH cells through the crop stage with config/nih_cells.yaml."""
    return _build_with_preset(path, "nih4k", SHARED / "nih_malaria_cell_images_4k", overrides)


def build_mnist6k(path: Path, overrides: list[dict] = ()) -> Path:
    """MNIST's own 28x28 digits (6,112) through the crop stage with config/digits.yaml (32 px)."""
    return _build_with_preset(path, "mnist6k", SHARED / "mnist_train6k" / "mnist_train6k.npz", overrides)


BUILDERS = {
    "digits": build_digits,
    "jurkat": build_jurkat,
    "nih": build_nih,
    "simulated": build_simulated,
    "nih4k": build_nih4k,
    "mnist6k": build_mnist6k,
}
#: builders that run the crop stage, so --set crop.* keys change their store
THROUGH_CROP = {"simulated", "nih4k", "mnist6k"}


# --------------------------------------------------------------------------------------
# Scoring


def kmeans_scores(images: np.ndarray, labels: np.ndarray, k: int, seed: int) -> dict:
    from sklearn.cluster import KMeans

    x = images.reshape(len(images), -1).astype(np.float32) / 255
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return agreement(labels, pred)


def run_one(
    name: str,
    store: Path,
    seed: int,
    out: Path,
    overrides: list[dict],
    device: str,
    with_analysis: bool = False,
) -> list[dict]:
    preset = PRESETS[name]
    cfg = load_config(REPO / "config" / preset, overrides)
    cs = read_crop_store(store)
    labelled = cs.labels != ""
    labels = cs.labels[labelled]
    images = cs.images[labelled]
    n_classes = len(set(labels))
    k_cat = cfg.train.latent.categorical[0]
    run_dir = out / name / f"seed{seed}"
    t0 = time.perf_counter()
    train(store, run_dir, cfg.train, seed=seed, device=device, resolved_config=cfg)
    wall = time.perf_counter() - t0
    D, _, meta = load_discriminator(run_dir)
    # Q on every crop: the label-free score the workflow uses to pick a seed (infogan_cells.analysis.seeds)
    # reads all of them, the agreement the labelled ones
    all_pred, all_probs = assign_with_q(D, cs.images)
    pred = all_pred[labelled]
    score, _ = information_score(
        float(all_probs.max(1).mean()), np.bincount(all_pred, minlength=k_cat).tolist(), k_cat
    )
    base = {"dataset": name, "seed": seed, "n": int(len(labels)), "classes": n_classes}
    rows = [
        {
            **base,
            "method": f"InfoGAN (K={k_cat})",
            **agreement(labels, pred),
            "images": meta["images_seen"],
            "train_s": round(meta["seconds"], 1),
            "wall_s": round(wall, 1),
            "categories_used": int(len(np.unique(pred))),
            "information_score": score,
        }
    ]
    if with_analysis:  # the analysis stage's quality measures, train-on-synthetic-test-on-real among them
        from infogan_cells.analysis.analyse import analyse

        m = analyse(run_dir, store, run_dir / "analysis", cfg.analyse, device=device)
        quality = m["quality"]
        rows[0].update(
            {
                "tstr": quality["tstr_accuracy"],
                "trtr": quality["trtr_accuracy"],
                "tstr_balanced": quality.get("tstr_balanced_accuracy"),
                "trtr_balanced": quality.get("trtr_balanced_accuracy"),
                "mixed_balanced": quality.get("mixed_balanced_accuracy"),
                "best_feature": m["baselines"]["best_feature"]["feature"],
                "best_feature_nmi": m["baselines"]["best_feature"]["nmi"],
                "tstr_logistic": quality["classifier"]["logistic"]["tstr_accuracy"],
                "trtr_logistic": quality["classifier"]["logistic"]["trtr_accuracy"],
                "knn_precision": quality["knn_precision"],
                "knn_recall": quality["knn_recall"],
            }
        )
    t0 = time.perf_counter()
    rows.append(
        {
            **base,
            "method": f"k-means (k={n_classes})",
            **kmeans_scores(images, labels, n_classes, seed),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    )
    if k_cat != n_classes:
        rows.append({**base, "method": f"k-means (k={k_cat})", **kmeans_scores(images, labels, k_cat, seed)})
    return rows


def summarise(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    extra = [c for c in ("tstr", "trtr") if c in df and df[c].notna().any()]
    lines = [
        "| data set | method | seeds | ACC (Hungarian) | NMI | ARI | purity | train s |"
        + "".join(f" {c.upper()} |" for c in extra),
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(extra),
    ]
    if "information_score" in df:  # the seed the workflow would keep, per data set and method
        picked = []
        for (_, _), g in df[df["information_score"].notna()].groupby(["dataset", "method"], sort=False):
            if g["seed"].nunique() > 1:
                best = g.loc[[g["information_score"].astype(float).idxmax()]].copy()
                best["method"] = best["method"] + ", seed picked by the information score"
                picked.append(best)
        df = pd.concat([df, *picked], ignore_index=True)
    for (ds, method), g in df.groupby(["dataset", "method"], sort=False):

        def ms(col, g=g):
            v = g[col].dropna().to_numpy(float)
            if not len(v):
                return ""
            return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

        secs = g["train_s"].dropna().to_numpy(float) if "train_s" in g else np.array([])
        seeds = f"seed {g['seed'].iloc[0]}" if "picked" in method else len(g)
        lines.append(
            f"| {ds} | {method} | {seeds} | {ms('acc')} | {ms('nmi')} | {ms('ari')} | {ms('purity')} | "
            f"{f'{secs.mean():.0f}' if len(secs) else ''} |" + "".join(f" {ms(c)} |" for c in extra)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["digits"], choices=sorted(BUILDERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "clustering")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="set_",
        metavar="KEY=VALUE",
        help="config override applied to every preset, e.g. train.total_images=20000",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--analyse",
        action="store_true",
        help="also run the analysis stage on each run and record its train-on-synthetic-test-on-real "
        "(TSTR) and train-on-real-test-on-real (TRTR) accuracies",
    )
    p.add_argument(
        "--summarise",
        action="store_true",
        help="train nothing: print the table of the results already in <out>/results.jsonl "
        "(runs side by side may append to the same file)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.summarise:
        lines = (args.out / "results.jsonl").read_text().splitlines()
        print(summarise([json.loads(line) for line in lines if line.strip()]))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [parse_set_option(s) for s in args.set_]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        store = args.out / name / "crops.h5"
        if not store.exists():
            try:
                BUILDERS[name](store, overrides) if name in THROUGH_CROP else BUILDERS[name](store)
            except (RuntimeError, FileNotFoundError) as err:
                log.warning("%s: skipped (%s)", name, err)
                continue
        for seed in args.seeds:
            new = run_one(name, store, seed, args.out, overrides, args.device, args.analyse)
            for r in new:
                log.info("%s", r)
            rows += new
            with open(args.out / "results.jsonl", "a") as f:
                for r in new:
                    f.write(json.dumps(r) + "\n")
    table = summarise(rows)
    (args.out / "summary.md").write_text(
        f"threads={torch.get_num_threads()} device={args.device} overrides={args.set_}\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
