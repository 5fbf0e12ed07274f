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
from the EMA generator(s) with the run's categorical prior, except those the train-on-synthetic
classifiers learn from: equal shares of the categories, as ``synthesis.proportions: uniform``
(the default) draws the synthetic data set. Every random draw has a fixed seed, so the same run
and crops give the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from infogan_cells._io import atomic_path, write_json_atomic
from infogan_cells.analysis.baselines import best_single_feature
from infogan_cells.analysis.codes import (
    assign,
    category_map,
    generate,
    kmeans_scores,
    save_sample_grid,
    traverse,
    with_category,
    write_cells,
)
from infogan_cells.analysis.metrics import (
    category_summary,
    contingency_table,
    label_scores,
    name_codes,
    pinned_codes,
)
from infogan_cells.analysis.morphology import (
    FEATURES,
    foreground_mask,
    intensity_features,
    measure_morphology,
)
from infogan_cells.analysis.synthetic import flat_pixels, standardise, synthetic_quality
from infogan_cells.config import AnalyseConfig
from infogan_cells.data.store import holdout_split, read_crop_store
from infogan_cells.errors import InputError
from infogan_cells.model.checkpoint import load_discriminator, load_generator, resolve_device
from infogan_cells.model.latent import sample_latent
from infogan_cells.model.networks import generators_of
from infogan_cells.progress import progress

log = logging.getLogger(__name__)

GRID_SIDE = 6  # samples/ grids are GRID_SIDE x GRID_SIDE
HIST_FEATURES = ("area", "eccentricity", "intensity", "focus")
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
    # synthetic cells as synthesis draws them, from every generator the run kept; traversals
    # show one generator's codes, the final one's
    G_all, _, _ = load_generator(run_dir, ema=True, device=dev, snapshots=True)
    G = generators_of(G_all)[-1]
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
    probs, cont, q_features = assign(D, images)
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
        "kmeans_pixels": kmeans_scores(flat_pixels(images), labels, n_cat),
        "kmeans_morphology": kmeans_scores(standardise(real_morph[list(FEATURES)])[0], labels, n_cat),
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
    syn_images = generate(G_all, spec, syn_latent, dev)
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
    names = train_map["label"].to_numpy(dtype=str)
    syn_labels = names[syn_cats]
    teach = None  # the classifiers learn from the synthetic set as synthesis draws it by default
    if spec.categorical and not np.allclose(prior, 1.0 / n_cat):
        teach_latent = sample_latent(
            spec,
            config.n_synthetic,
            generator=torch.Generator().manual_seed(3),
            cat_probs=[torch.full((n_cat,), 1.0 / n_cat)],
        )
        teach = (generate(G_all, spec, teach_latent, dev), names[teach_latent.cat[:, 0].numpy()])
    quality = synthetic_quality(
        images, labels, hold, train, real_morph, syn_images, syn_labels, syn_morph, config, dev, teach=teach
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
        grid_latent = with_category(grid_base, k) if spec.categorical else grid_base
        save_sample_grid(
            out_dir / "samples" / f"cat{k:02d}.png", generate(G_all, spec, grid_latent, dev), GRID_SIDE
        )
        top = np.argsort(-probs[:, k], kind="stable")[: config.nearest]
        save_sample_grid(out_dir / "nearest" / f"cat{k:02d}.png", images[top], math.ceil(math.sqrt(len(top))))
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
        "generators": len(generators_of(G_all)),
        "categories": summary,
        "baselines": baselines,
        "codes": name_codes(codes_table, pinned_codes(D, channel_names)),
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


# --------------------------------------------------------------------------------------
# Helpers


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
