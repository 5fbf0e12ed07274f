"""What a trained InfoGAN learned: categories against labels, what each continuous code does,
and how close its synthetic cells come to real ones.

:func:`analyse` writes into its output folder (the report and the explorer read this layout)::

    assignments.csv          crop_index (row in the crop store), category, confidence, cont_0..,
                             label ("" unknown); crops that failed QC are left out, as in training
    cells.h5ad               AnnData, one row per crop of assignments.csv (obs_names: crop_index):
                             obs = the crop store's obs columns, category, category_label,
                             confidence; X = morphology (var: feature names); obsm =
                             q_probabilities, q_continuous (Q's code estimates), q_features (Q's
                             hidden layer); uns = run, crops (paths)
    contingency.csv          category x label counts of the labelled crops
    category_map.csv         category, label, purity, size (label: the semi-supervised name, else
                             the majority label, else category_07)
    codes.csv                code, feature, rho, p: Spearman of each continuous code with each
                             morphology feature of generated cells, pooled over categories
    metrics.json             accuracy, nmi, ari, purity, n_crops, n_labelled, n_categories,
                             categories, baselines (k-means on pixels and on morphology, the best
                             single feature), codes, quality, config (label measures are null
                             without labels)
    quality.json             metrics.json["quality"]: flat headline keys (fd_morphology,
                             kid_morphology, fd_encoder, kid_encoder, knn_precision, knn_recall,
                             memorisation_ratio, tstr_/trtr_/mixed_accuracy and _balanced_accuracy),
                             then the details
    samples/catKK.png        generated cells of category KK
    nearest/catKK.png        the real crops Q gives the highest probability of category KK
    morphology/catKK.png     histograms: real crops assigned to KK vs synthetic crops of KK
    composition/catKK.png    labels of the crops assigned to KK (only when the crops have labels)
    traversals/catKK_codeJ.png / .gif   rows = a few z, columns = code J from -r to r

Real crops are assigned with Q (the argmax of the first categorical code); synthetic crops come
from the EMA generator with the run's categorical prior. Every random draw has a fixed seed, so
the same run and crops give the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from infogan_cells._io import atomic_path, write_json_atomic
from infogan_cells.analysis import quality as q
from infogan_cells.analysis.baselines import best_single_feature
from infogan_cells.analysis.metrics import (
    category_summary,
    contingency_table,
    label_scores,
    name_codes,
    spearman_table,
)
from infogan_cells.analysis.morphology import (
    FEATURES,
    foreground_mask,
    intensity_features,
    measure_morphology,
)
from infogan_cells.config import AnalyseConfig, LatentSpec
from infogan_cells.data.h5ad import write_h5ad
from infogan_cells.data.store import holdout_split, read_crop_store
from infogan_cells.errors import InputError
from infogan_cells.model.augment import to_uint8
from infogan_cells.model.checkpoint import load_discriminator, load_generator, resolve_device
from infogan_cells.model.latent import Latent, sample_latent, to_input
from infogan_cells.progress import progress
from infogan_cells.report.plots import image_grid, save_gif, save_grid

log = logging.getLogger(__name__)

GRID_SIDE = 6  # samples/ grids are GRID_SIDE x GRID_SIDE
TRAVERSAL_ROWS = 5
MIN_TILE = 64  # small crops are enlarged to this many pixels in figures
HIST_FEATURES = ("area", "eccentricity", "intensity", "focus")
# Above this many pixel values k-means on pixels runs on 50 principal components instead.
PIXEL_KMEANS_LIMIT = 20_000_000
STEPS = ("assign", "traversals", "quality", "figures", "report")  # progress of an analysis


def analyse(
    run_dir: str | Path,
    crops_path: str | Path,
    out_dir: str | Path,
    config: AnalyseConfig,
    *,
    device: str = "auto",
) -> dict:
    """Analyse the run in ``run_dir`` on the crop store ``crops_path``; write ``out_dir``.

    Returns the contents of ``metrics.json``. Raises :class:`InputError` for a run without a
    network or crops that do not fit the model.
    """
    with progress(len(STEPS), "analyse", unit="step") as bar:
        return _analyse(run_dir, crops_path, out_dir, config, device, bar)


def _analyse(
    run_dir: str | Path, crops_path: str | Path, out_dir: str | Path, config: AnalyseConfig, device: str, bar
) -> dict:
    dev = resolve_device(device)
    out_dir = Path(out_dir)
    D, spec, meta = load_discriminator(run_dir, device=dev)
    G, _, _ = load_generator(run_dir, ema=True, device=dev)
    crops = read_crop_store(crops_path)
    # the crops training saw: those that passed QC (crop_index keeps the store's row numbers)
    keep = crops.obs["qc_pass"].to_numpy(dtype=bool) if "qc_pass" in crops.obs else np.ones(len(crops), bool)
    if not keep.all():
        log.info("%s: analysing the %d of %d crops that passed QC", crops_path, keep.sum(), len(keep))
    images, labels, crop_index = crops.images[keep], crops.labels[keep], np.flatnonzero(keep)
    _check_crops(images, D.kwargs, crops_path, run_dir)
    channel_names = crops.channel_names or [f"ch{i}" for i in range(images.shape[3])]
    n_cat = spec.categorical[0] if spec.categorical else 1
    log.info("analysing %d crops (%d labelled) in %d categories", len(images), (labels != "").sum(), n_cat)

    # Assign the real crops
    bar.set_postfix(step="assign")
    probs, cont, q_features = assign(D, images, n_cat)
    categories = probs.argmax(axis=1)
    assignments = pd.DataFrame(
        {"crop_index": crop_index, "category": categories, "confidence": probs.max(axis=1)}
    )
    for j in range(cont.shape[1]):
        assignments[f"cont_{j}"] = cont[:, j]
    assignments["label"] = labels
    _write_csv(out_dir / "assignments.csv", assignments)

    # Categories against labels, and k-means baselines
    table = contingency_table(categories, labels, n_cat)
    _write_csv(out_dir / "contingency.csv", table, index=True)
    summary = category_summary(categories, table)
    cmap = category_map(summary, meta.get("category_labels"))
    _write_csv(out_dir / "category_map.csv", cmap)
    masks = foreground_mask(images)
    real_morph = measure_morphology(images, channel_names=channel_names, masks=masks)
    one_number = pd.concat(
        [
            real_morph.drop(columns="orientation"),
            intensity_features(images, channel_names=channel_names, masks=masks),
        ],
        axis=1,
    )
    write_cells(
        out_dir / "cells.h5ad",
        crops.obs.iloc[crop_index],
        crop_index,
        probs,
        cont,
        q_features,
        real_morph,
        cmap,
        uns={"run": str(run_dir), "crops": str(crops_path)},
    )
    baselines = {
        "kmeans_pixels": kmeans_scores(_pixels(images), labels, n_cat),
        "kmeans_morphology": kmeans_scores(_standardise(real_morph[list(FEATURES)])[0], labels, n_cat),
        "best_feature": best_single_feature(one_number, labels, n_cat),
    }

    # What the continuous codes do
    bar.update(1)
    bar.set_postfix(step="traversals")
    log.info(
        "traversals: %d categories x %d codes x %d steps x %d samples",
        n_cat,
        spec.n_continuous,
        config.traversal_steps,
        config.traversal_samples,
    )
    codes_table = traverse(G, spec, n_cat, config, out_dir / "traversals", dev, channel_names)
    _write_csv(out_dir / "codes.csv", codes_table)

    # Synthetic cells and their quality
    bar.update(1)
    bar.set_postfix(step="quality")
    prior = _prior(meta.get("category_prior"), n_cat)
    syn_latent = sample_latent(
        spec,
        config.n_synthetic,
        generator=torch.Generator().manual_seed(1),
        cat_probs=[torch.as_tensor(prior)] if spec.categorical else None,
    )
    log.info("quality: %d synthetic crops", config.n_synthetic)
    syn_images = generate(G, spec, syn_latent, dev)
    syn_cats = syn_latent.cat[:, 0].numpy() if spec.categorical else np.zeros(len(syn_images), np.int64)
    syn_morph = measure_morphology(syn_images, channel_names=channel_names)
    recorded = meta.get("holdout") or []
    if recorded:  # the crops training never saw
        held = np.isin(crop_index, recorded)
        hold, train = np.flatnonzero(held), np.flatnonzero(~held)
        if len(hold) < 2 or len(train) < 2:
            raise InputError(
                f"{crops_path}: only {len(hold)} of the {len(recorded)} crops held out of training "
                f"in {run_dir} are in this store; analyse the crop store the run was trained on"
            )
    else:
        hold, train = holdout_split(len(images), config.holdout_fraction)
    # synthetic crops take their category's label as the training split sees it (no test labels)
    train_map = category_map(
        category_summary(categories[train], contingency_table(categories[train], labels[train], n_cat)),
        meta.get("category_labels"),
    )
    syn_labels = train_map["label"].to_numpy(dtype=str)[syn_cats]
    quality = synthetic_quality(
        images, labels, hold, train, real_morph, syn_images, syn_labels, syn_morph, config, dev
    )
    quality["holdout_seen_in_training"] = not recorded
    if not recorded:
        log.info(
            "the %d held-out crops were seen in training (set train.holdout_fraction for a true hold-out)",
            len(hold),
        )
    write_json_atomic(out_dir / "quality.json", quality)

    # Figures per category
    bar.update(1)
    bar.set_postfix(step="figures")
    log.info("figures for %d categories", n_cat)
    grid_base = sample_latent(spec, GRID_SIDE**2, generator=torch.Generator().manual_seed(2))
    for k in range(n_cat):
        grid_latent = _with_category(grid_base, k) if spec.categorical else grid_base
        _save_grid(out_dir / "samples" / f"cat{k:02d}.png", generate(G, spec, grid_latent, dev), GRID_SIDE)
        top = np.argsort(-probs[:, k], kind="stable")[: config.nearest]
        _save_grid(out_dir / "nearest" / f"cat{k:02d}.png", images[top], math.ceil(math.sqrt(len(top))))
        _morphology_figure(
            out_dir / "morphology" / f"cat{k:02d}.png",
            k,
            real_morph[categories == k],
            syn_morph[syn_cats == k],
        )
        if (labels != "").any():
            _composition_figure(out_dir / "composition" / f"cat{k:02d}.png", k, table.iloc[k])

    metrics = {
        **label_scores(categories, labels),
        "n_crops": len(images),
        "n_labelled": int((labels != "").sum()),
        "n_categories": n_cat,
        "categories": summary,
        "baselines": baselines,
        "codes": name_codes(codes_table),
        "quality": quality,
        "config": dataclasses.asdict(config),
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    bar.update(1)
    bar.set_postfix(step="report")
    _call_report(out_dir, Path(run_dir), dev)
    bar.update(1)
    return metrics


# --------------------------------------------------------------------------------------
# Steps


def _check_crops(images: np.ndarray, d_kwargs: dict, crops_path: str | Path, run_dir: str | Path) -> None:
    if len(images) < 4:
        raise InputError(
            f"{crops_path}: holds {len(images)} crops that passed QC; the analysis needs at least 4"
        )
    _, h, w, c = images.shape
    size, channels = d_kwargs["img_size"], d_kwargs["channels"]
    if (h, w, c) != (size, size, channels):
        raise InputError(
            f"{crops_path}: crops are {h}x{w} with {c} channel(s), but the model in {run_dir} "
            f"takes {size}x{size} with {channels} channel(s); crop with crop.size={size}"
        )


@torch.no_grad()
def assign(
    D: torch.nn.Module, images: np.ndarray, n_cat: int, *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q's category probabilities (N, n_cat) for the first categorical code, its continuous
    code means (N, n_continuous) and its hidden layer (N, q_hidden), for crops (N, H, W, C) uint8."""
    device = next(D.parameters()).device
    probs, cont, hidden = [], [], []
    for i in range(0, len(images), batch_size):
        h = D.trunk(q.to_unit_range(images[i : i + batch_size]).to(device))
        out = D.q_head(h)
        if out.cat_logits:
            probs.append(torch.softmax(out.cat_logits[0], dim=1).cpu().numpy())
        else:
            probs.append(np.ones((len(out.cont_mu), 1), np.float32))
        cont.append(out.cont_mu.cpu().numpy())
        hidden.append(D.q_net[:-1](h).float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(cont), np.concatenate(hidden)


def write_cells(
    path: Path,
    obs: pd.DataFrame,
    crop_index: np.ndarray,
    probs: np.ndarray,
    cont: np.ndarray,
    q_features: np.ndarray,
    morphology: pd.DataFrame,
    cmap: pd.DataFrame,
    *,
    uns: dict[str, str] | None = None,
) -> None:
    """``cells.h5ad``: one row per crop (named by its crop index) with its metadata, category and
    confidence in ``obs``, its morphology as ``X`` and Q's outputs in ``obsm``."""
    obs = obs.reset_index(drop=True).set_axis(crop_index.astype(str))
    categories = probs.argmax(axis=1)
    obs["category"] = categories
    names = cmap["label"].astype(str).tolist()  # category_map.csv's name of each category
    obs["category_label"] = pd.Categorical([names[k] for k in categories], categories=sorted(set(names)))
    obs["confidence"] = probs.max(axis=1)
    write_h5ad(
        path,
        morphology.to_numpy(np.float32),
        obs,
        pd.DataFrame(index=morphology.columns.astype(str)),
        obsm={
            "q_probabilities": probs.astype(np.float32),
            "q_continuous": cont.astype(np.float32),
            "q_features": q_features.astype(np.float32),
        },
        uns=uns,
    )


@torch.no_grad()
def generate(
    G: torch.nn.Module, spec: LatentSpec, latent: Latent, device: torch.device, *, batch_size: int = 256
) -> np.ndarray:
    """Generated crops (N, H, W, C) uint8 for ``latent``."""
    parts = []
    for i in range(0, len(latent), batch_size):
        part = Latent(
            latent.z[i : i + batch_size], latent.cat[i : i + batch_size], latent.cont[i : i + batch_size]
        )
        x = G(to_input(spec, part.to(device)))
        parts.append(to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(parts)


def category_map(summary: dict, category_labels: list | None) -> pd.DataFrame:
    """Each category's label name: the semi-supervised run's name for it, else its majority
    label, else ``category_KK``; purity is the share of its labelled crops carrying that name.

    ``summary`` is :func:`~infogan_cells.analysis.metrics.category_summary`'s.
    """
    rows = []
    for key, entry in summary.items():
        k = int(key)
        name = category_labels[k] if category_labels and k < len(category_labels) else None
        name = str(name) if name else entry["majority_label"] or f"category_{k:02d}"
        n_labelled = sum(entry["label_counts"].values())
        purity = entry["label_counts"].get(name, 0) / n_labelled if n_labelled else np.nan
        rows.append({"category": k, "label": name, "purity": purity, "size": entry["size"]})
    return pd.DataFrame(rows, columns=["category", "label", "purity", "size"])


def kmeans_scores(x: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Label measures of k-means clusters of ``x``; ``None`` values without labels."""
    if not (labels != "").any() or len(x) < k:
        return dict.fromkeys(("accuracy", "nmi", "ari", "purity"))
    if x.shape[0] * x.shape[1] > PIXEL_KMEANS_LIMIT:
        log.info("k-means on %d x %d values: on 50 principal components instead", *x.shape)
        x = PCA(50, random_state=0).fit_transform(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clusters = KMeans(k, n_init=3, random_state=0).fit_predict(x)
    for w in caught:
        log.warning("k-means: %s", w.message)
    return label_scores(clusters, labels)


def traverse(
    G: torch.nn.Module,
    spec: LatentSpec,
    n_cat: int,
    config: AnalyseConfig,
    out_dir: Path,
    device: torch.device,
    channel_names: list[str],
) -> pd.DataFrame:
    """Sweep each continuous code from -r to r for each category; write the strips and GIFs and
    return the Spearman table of code value against morphology of the generated cells.

    The same ``config.traversal_samples`` z and other codes (seed 3) are used at every step and
    in every category, so only the swept code changes along a row.
    """
    if spec.n_continuous == 0:
        return pd.DataFrame(columns=["code", "feature", "rho", "p"])
    steps = np.linspace(-1, 1, config.traversal_steps) * spec.continuous_range
    n_s = config.traversal_samples
    base = sample_latent(spec, n_s, generator=torch.Generator().manual_seed(3))
    tables = []
    for j in range(spec.n_continuous):
        values, morph = [], []
        for k in range(n_cat):
            lat = _with_category(base, k) if spec.categorical else base
            lat = Latent(
                lat.z.repeat(len(steps), 1), lat.cat.repeat(len(steps), 1), lat.cont.repeat(len(steps), 1)
            )
            lat.cont[:, j] = torch.as_tensor(np.repeat(steps, n_s), dtype=lat.cont.dtype)
            imgs = generate(G, spec, lat, device)  # step-major: (steps * n_s, H, W, C)
            _write_traversal(out_dir, f"cat{k:02d}_code{j}", imgs.reshape(len(steps), n_s, *imgs.shape[1:]))
            values.append(lat.cont[:, j].numpy())
            morph.append(measure_morphology(imgs, channel_names=channel_names))
        feats = pd.concat(morph, ignore_index=True).drop(columns="orientation")
        tables.append(spearman_table(np.concatenate(values)[:, None], feats, code_names=[f"c{j}"]))
    return pd.concat(tables, ignore_index=True)


def synthetic_quality(
    images: np.ndarray,
    labels: np.ndarray,
    hold: np.ndarray,
    train: np.ndarray,
    real_morph: pd.DataFrame,
    syn_images: np.ndarray,
    syn_labels: np.ndarray,
    syn_morph: pd.DataFrame,
    config: AnalyseConfig,
    device: torch.device,
) -> dict:
    """Fréchet distance and KID on morphology and encoder features, k-NN precision/recall,
    memorisation, and train-on-synthetic-test-on-real accuracy (see :mod:`infogan_cells.analysis.quality`).

    The feature encoder learns from the training split only; ``hold`` is the memorisation
    check's reference and the classifiers' test set.
    """
    rng = np.random.default_rng(1)
    m_real, mean, std = _standardise(real_morph[list(FEATURES)])
    m_syn = (syn_morph[list(FEATURES)].to_numpy(np.float64) - mean) / std
    enc, enc_loss = q.train_encoder(images[train], epochs=config.encoder_epochs, device=device)
    log.info(
        "feature encoder: %d epochs on %d crops, reconstruction loss %.4f",
        config.encoder_epochs,
        len(train),
        enc_loss,
    )
    f_real, f_syn = q.encode(enc, images), q.encode(enc, syn_images)
    kid_m = q.kernel_distance(m_real, m_syn, rng=np.random.default_rng(0))
    kid_e = q.kernel_distance(f_real, f_syn, rng=np.random.default_rng(0))
    # Equal sample sizes: the k-NN radii shrink as a set grows
    n_pr = min(len(f_real), len(f_syn))
    precision, recall = q.knn_precision_recall(
        f_real[rng.choice(len(f_real), n_pr, replace=False)],
        f_syn[rng.choice(len(f_syn), n_pr, replace=False)],
        k=config.k_nn,
    )
    pixels = _pixels(images)
    morphology = {"frechet": q.frechet_distance(m_real, m_syn), "kid": kid_m[0], "kid_std": kid_m[1]}
    encoder = {
        "frechet": q.frechet_distance(f_real, f_syn),
        "kid": kid_e[0],
        "kid_std": kid_e[1],
        "precision": precision,
        "recall": recall,
        "k": config.k_nn,
        "epochs": config.encoder_epochs,
        "loss": enc_loss,
    }
    memorised = {
        "pixels": q.memorisation(_pixels(syn_images), pixels[hold], pixels[train]),
        "encoder": q.memorisation(f_syn, f_real[hold], f_real[train]),
    }
    classifier = classifier_scores(
        f_real,
        labels,
        hold,
        train,
        f_syn,
        syn_labels,
        images=images,
        syn_images=syn_images,
        steps=config.classifier_steps,
        device=device,
    )
    return {
        # the headline numbers under flat keys (the report's contract), the details below
        "fd_morphology": morphology["frechet"],
        "kid_morphology": morphology["kid"],
        "fd_encoder": encoder["frechet"],
        "kid_encoder": encoder["kid"],
        "knn_precision": precision,
        "knn_recall": recall,
        "memorisation_ratio": memorised["encoder"]["ratio"],
        **{k: classifier[k] for k in CLASSIFIER_FIGURES},
        "n_real": len(images),
        "n_train": len(train),
        "n_holdout": len(hold),
        "n_synthetic": len(syn_images),
        "morphology": morphology,
        "encoder": encoder,
        "memorisation": memorised,
        "classifier": classifier,
    }


#: classifier_scores' headline figures (also flat keys of quality.json); ``mixed``: labelled real +
#: synthetic, only when some crops carry no label.
CLASSIFIER_FIGURES = (
    "tstr_accuracy",
    "trtr_accuracy",
    "tstr_balanced_accuracy",
    "trtr_balanced_accuracy",
    "mixed_accuracy",
    "mixed_balanced_accuracy",
)


def classifier_scores(
    f_real: np.ndarray,
    labels: np.ndarray,
    hold: np.ndarray,
    train: np.ndarray,
    f_syn: np.ndarray,
    syn_labels: np.ndarray,
    *,
    images: np.ndarray | None = None,
    syn_images: np.ndarray | None = None,
    steps: int = 400,
    device: torch.device | str = "cpu",
) -> dict:
    """Accuracy and balanced accuracy (mean recall over classes) on the labelled held-out crops of
    one fixed classifier trained on synthetic crops (labels from the category map: train on
    synthetic, test on real), on the labelled training crops (train on real: labelled real only)
    and, when only some crops carry labels, on both (labelled real + synthetic, each half of every
    class's draws). The test crops are never trained on.

    The headline figures come from a small CNN on the pixels (:func:`infogan_cells.analysis.quality.cnn_predict`,
    when ``images`` and ``syn_images`` are given); a logistic regression on encoder features is
    reported beside it (``logistic``, accuracy only). Synthetic crops whose category has no real
    label name (``category_KK``) are left out.
    """
    known = labels != ""
    test = hold[known[hold]]
    real_train = train[known[train]]
    keep = np.isin(syn_labels, np.unique(labels[known]))
    partial = bool(known.any() and not known.all())
    logistic = {"tstr_accuracy": None, "trtr_accuracy": None}
    cnn: dict = {"steps": steps}
    if len(test):
        logistic["tstr_accuracy"] = q.classifier_accuracy(
            f_syn[keep], syn_labels[keep], f_real[test], labels[test]
        )
        logistic["trtr_accuracy"] = q.classifier_accuracy(
            f_real[real_train], labels[real_train], f_real[test], labels[test]
        )
    sets = {
        "tstr": (syn_images[keep] if syn_images is not None else None, syn_labels[keep], None),
        "trtr": (images[real_train] if images is not None else None, labels[real_train], None),
    }
    if partial and images is not None and syn_images is not None:
        sets["mixed"] = (
            np.concatenate([images[real_train], syn_images[keep]]),
            np.concatenate([labels[real_train], syn_labels[keep]]),
            np.repeat([0, 1], [len(real_train), int(keep.sum())]),
        )
    for name, (x, y, groups) in sets.items():
        pred = (
            q.cnn_predict(x, y, images[test], steps=steps, device=device, groups=groups)
            if len(test) and x is not None
            else None
        )
        cnn[f"{name}_accuracy"] = None if pred is None else float((pred == labels[test]).mean())
        cnn[f"{name}_balanced_accuracy"] = None if pred is None else q.balanced_accuracy(labels[test], pred)
    headline = cnn if images is not None and syn_images is not None else logistic
    model = (
        "small CNN on the pixels (balanced classes, 90-degree rotations and flips)"
        if headline is cnn
        else "logistic regression on encoder features"
    )
    return {
        "model": model,
        **{k: headline.get(k) for k in CLASSIFIER_FIGURES},
        "n_test": len(test),
        "n_test_classes": len(np.unique(labels[test])),
        "n_real_train": len(real_train),
        "n_synthetic_train": int(keep.sum()),
        "labels_partial": partial,
        "cnn": cnn,
        "logistic": logistic,
    }


# --------------------------------------------------------------------------------------
# Helpers


def _pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255


def _standardise(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = frame.to_numpy(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std, mean, std


def _prior(prior: object, n_cat: int) -> np.ndarray:
    """The run's prior over the first categorical code's categories (uniform when absent or unfit)."""
    if isinstance(prior, (list, tuple)) and prior and not np.isscalar(prior[0]):
        prior = prior[0]  # one prior per categorical code; the first is the category
    p = np.asarray(prior if prior is not None else [], dtype=np.float64).ravel()
    if p.shape != (n_cat,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        if prior is not None:
            log.warning("category_prior %r does not fit %d categories; using a uniform prior", prior, n_cat)
        return np.full(n_cat, 1 / n_cat)
    return p / p.sum()


def _with_category(latent: Latent, k: int) -> Latent:
    cat = latent.cat.clone()
    cat[:, 0] = k
    return Latent(latent.z.clone(), cat, latent.cont.clone())


def _save_grid(path: Path, images: np.ndarray, n_cols: int) -> np.ndarray:
    """Tile crops (N, H, W, C) uint8 into a PNG, enlarged so that a tile is at least 64 px."""
    scale = max(1, math.ceil(MIN_TILE / images.shape[1]))
    return save_grid(path, images.transpose(0, 3, 1, 2), min(n_cols, max(len(images), 1)), scale=scale)


def _write_traversal(out_dir: Path, stem: str, imgs: np.ndarray) -> None:
    """imgs: (steps, samples, H, W, C); strip rows = samples, columns = steps; GIF frames = steps."""
    rows = min(TRAVERSAL_ROWS, imgs.shape[1])
    grid = imgs[:, :rows].transpose(1, 0, 2, 3, 4).reshape(-1, *imgs.shape[2:])
    _save_grid(out_dir / f"{stem}.png", grid, imgs.shape[0])
    scale = max(1, math.ceil(MIN_TILE / imgs.shape[2]))
    frames = [
        image_grid(imgs[s, :rows].transpose(0, 3, 1, 2), rows).repeat(scale, 0).repeat(scale, 1)
        for s in range(len(imgs))
    ]
    save_gif(out_dir / f"{stem}.gif", frames + frames[-2:0:-1], duration_ms=150)  # back and forth


def _write_csv(path: Path, frame: pd.DataFrame, *, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def _save_figure(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _morphology_figure(path: Path, k: int, real: pd.DataFrame, syn: pd.DataFrame) -> None:
    fig = Figure(figsize=(10, 2.6), layout="constrained")
    for ax, feat in zip(fig.subplots(1, len(HIST_FEATURES)), HIST_FEATURES, strict=True):
        both = np.concatenate([real[feat].to_numpy(), syn[feat].to_numpy()])
        if len(both):
            bins = np.histogram_bin_edges(both, bins=20)
            for data, name in ((real, f"real assigned ({len(real)})"), (syn, f"synthetic ({len(syn)})")):
                if len(data):
                    ax.hist(data[feat], bins=bins, density=True, alpha=0.5, label=name)
            ax.legend(fontsize=7)
        ax.set_title(feat, fontsize=9)
    fig.suptitle(f"category {k}", fontsize=10)
    _save_figure(fig, path)


def _composition_figure(path: Path, k: int, counts: pd.Series) -> None:
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(counts)), counts.to_numpy())
    ax.set_xticks(range(len(counts)), [str(c) for c in counts.index], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("labelled crops")
    ax.set_title(f"category {k}: {int(counts.sum())} labelled crops", fontsize=10)
    _save_figure(fig, path)


def _call_report(out_dir: Path, run_dir: Path, device: torch.device) -> None:
    from infogan_cells.report.pages import write_report

    write_report(out_dir, run_dir=run_dir, device=str(device))
