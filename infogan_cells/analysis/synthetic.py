"""How the synthetic cells compare with the real ones: distances, k-NN precision and recall,
memorisation, and classifiers trained on one and tested on the other."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
import torch

from infogan_cells.analysis import quality
from infogan_cells.analysis.morphology import (
    FEATURES,
)
from infogan_cells.config import AnalyseConfig

log = logging.getLogger(__name__)


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
    *,
    teach: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Fréchet distance and KID on morphology and encoder features, k-NN precision/recall,
    memorisation, and train-on-synthetic-test-on-real accuracy (see :mod:`infogan_cells.analysis.quality`).

    The feature encoder learns from the training split only; ``hold`` is the memorisation
    check's reference and the classifiers' test set. ``teach``: (images, labels) of the synthetic
    crops the classifiers learn from, when they are not ``syn_images`` (a run whose prior is
    not uniform: the distances compare the run's own mix with the real crops, the classifiers
    learn from equal shares of the categories, as the synthetic data set holds by default).
    """
    rng = np.random.default_rng(1)
    m_real, mean, std = standardise(real_morph[list(FEATURES)])
    m_syn = (syn_morph[list(FEATURES)].to_numpy(np.float64) - mean) / std
    enc, enc_loss = quality.train_encoder(images[train], epochs=config.encoder_epochs, device=device)
    log.info(
        "feature encoder: %d epochs on %d crops, reconstruction loss %.4f",
        config.encoder_epochs,
        len(train),
        enc_loss,
    )
    f_real, f_syn = quality.encode(enc, images), quality.encode(enc, syn_images)
    kid_m = quality.kernel_distance(m_real, m_syn, rng=np.random.default_rng(0))
    kid_e = quality.kernel_distance(f_real, f_syn, rng=np.random.default_rng(0))
    # Equal sample sizes: the k-NN radii shrink as a set grows
    n_pr = min(len(f_real), len(f_syn))
    precision, recall = quality.knn_precision_recall(
        f_real[rng.choice(len(f_real), n_pr, replace=False)],
        f_syn[rng.choice(len(f_syn), n_pr, replace=False)],
        k=config.k_nn,
    )
    pixels = flat_pixels(images)
    morphology = {"frechet": quality.frechet_distance(m_real, m_syn), "kid": kid_m[0], "kid_std": kid_m[1]}
    encoder = {
        "frechet": quality.frechet_distance(f_real, f_syn),
        "kid": kid_e[0],
        "kid_std": kid_e[1],
        "precision": precision,
        "recall": recall,
        "k": config.k_nn,
        "epochs": config.encoder_epochs,
        "loss": enc_loss,
    }
    memorised = {
        "pixels": quality.memorisation(flat_pixels(syn_images), pixels[hold], pixels[train]),
        "encoder": quality.memorisation(f_syn, f_real[hold], f_real[train]),
    }
    teach_images, teach_labels = teach if teach is not None else (syn_images, syn_labels)
    classifier = classifier_scores(
        f_real,
        labels,
        hold,
        train,
        f_syn if teach is None else quality.encode(enc, teach_images),
        teach_labels,
        images=images,
        syn_images=teach_images,
        steps=config.classifier_steps,
        seeds=config.classifier_seeds,
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
        **{f"{k}_sd": classifier["cnn"].get(f"{k}_sd") for k in CLASSIFIER_FIGURES},
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
    seeds: int = 1,
    device: torch.device | str = "cpu",
) -> dict:
    """Accuracy and balanced accuracy (mean recall over classes) on the labelled held-out crops of
    one fixed classifier trained on synthetic crops (labels from the category map: train on
    synthetic, test on real), on the labelled training crops (train on real: labelled real only)
    and, when only some crops carry labels, on both (labelled real + synthetic, each half of every
    class's draws). The test crops are never trained on.

    The headline figures come from a small CNN on the pixels (:func:`infogan_cells.analysis.quality.cnn_predict`,
    when ``images`` and ``syn_images`` are given), trained ``seeds`` times (seeds 0, 1, ...): each
    figure is the mean, ``cnn`` holds its sd (``*_sd``) and every seed's value (``*_seeds``). A
    logistic regression on encoder features is reported beside it (``logistic``, accuracy only).
    Synthetic crops whose category has no real label name (``category_KK``) are left out.
    """
    known = labels != ""
    test = hold[known[hold]]
    real_train = train[known[train]]
    keep = np.isin(syn_labels, np.unique(labels[known]))
    partial = bool(known.any() and not known.all())
    logistic = {"tstr_accuracy": None, "trtr_accuracy": None}
    cnn: dict = {"steps": steps, "seeds": seeds}
    if len(test):
        logistic["tstr_accuracy"] = quality.classifier_accuracy(
            f_syn[keep], syn_labels[keep], f_real[test], labels[test]
        )
        logistic["trtr_accuracy"] = quality.classifier_accuracy(
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
        scores = None
        if x is not None:
            scores = quality.cnn_seed_scores(
                x, y, images[test], labels[test], seeds=seeds, steps=steps, device=device, groups=groups
            )
        for measure in ("accuracy", "balanced_accuracy"):
            key, values = f"{name}_{measure}", None if scores is None else scores[measure]
            cnn[key] = None if values is None else float(np.mean(values))
            cnn[f"{key}_sd"] = float(np.std(values, ddof=1)) if values and len(values) > 1 else None
            cnn[f"{key}_seeds"] = values
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
        "synthetic_train_labels": dict(Counter(syn_labels[keep].tolist())),
        "labels_partial": partial,
        "cnn": cnn,
        "logistic": logistic,
    }


def flat_pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255


def standardise(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = frame.to_numpy(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std, mean, std
