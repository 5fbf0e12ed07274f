"""Training learns: on two kinds of cells drawn here, Q's categories must find the kinds.

The other training tests check files, resumption and options; this one fails when training is
broken (a loss that no longer reaches Q, a generator that no longer learns, a wrong sign).
Two kinds that differ in size and brightness, with jitter in position, radius, brightness and
background noise; a few seconds of training on one CPU core. While it was written it passed for
training seeds 0-9 (NMI 1.0 each; 9-19 s per run on a loaded 2-core machine), while with the
information losses switched off (``lambda_cat`` and ``lambda_pair_mi`` 0) Q's categories stay
unrelated to the kinds, and 3,200 instead of 32,000 images are not enough either (NMI 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.draw import disk
from sklearn.metrics import normalized_mutual_info_score

from infogan_cells.analysis.codes import assign_with_q, generate, traverse
from infogan_cells.analysis.quality import balanced_accuracy, cnn_predict
from infogan_cells.config import AnalyseConfig, AugmentConfig, LatentSpec, TrainConfig
from infogan_cells.config.training import HandFeatures
from infogan_cells.data.store import write_crop_store
from infogan_cells.model.checkpoint import load_discriminator, load_generator
from infogan_cells.model.latent import sample_latent
from infogan_cells.training.loop import train

SIZE = 16
TOTAL_IMAGES = 32_000
TRAIN_SEED = 0


def two_kinds(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Large bright cells and small dim ones on a noisy dark background, alternating:
    images (n, 16, 16, 1) uint8 and kinds (n,) str."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    kinds = np.array(["large", "small"] * (n // 2))
    for i, kind in enumerate(kinds):
        img = rng.normal(30, 8, (SIZE, SIZE))
        centre = tuple(SIZE / 2 + rng.uniform(-1.5, 1.5, 2))
        if kind == "large":
            img[disk(centre, rng.uniform(5, 6.5), shape=(SIZE, SIZE))] = rng.uniform(190, 230)
        else:
            img[disk(centre, rng.uniform(2.5, 3.5), shape=(SIZE, SIZE))] = rng.uniform(80, 110)
        images[i, ..., 0] = np.clip(img, 0, 255)
    return images, kinds


def train_small(
    tmp_path, images: np.ndarray, channel_names: list[str], labels: np.ndarray | None = None, **config
) -> Path:
    """Train the small set-up shared by these tests on ``images`` (``labels``: "" for an unlabelled
    crop; default none labelled) for TOTAL_IMAGES (or ``total_images``); return the run directory."""
    n = len(images)
    obs = pd.DataFrame(
        {
            "source_image": "drawn",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": SIZE,
            "max_col": SIZE,
            "label": labels if labels is not None else "",
            "qc_pass": True,
            "qc_reason": "",
        }
    )
    store = tmp_path / "crops.h5"
    write_crop_store(store, images, obs, channel_names, csv=False)
    total = config.pop("total_images", TOTAL_IMAGES)
    seed = config.pop("seed", TRAIN_SEED)
    config = TrainConfig(
        latent=config.pop("latent", LatentSpec(z_dim=8, categorical=[2], n_continuous=0)),
        total_images=total,
        batch_size=32,
        g_channels=8,
        d_channels=8,
        ema_beta=0.9,
        tick_images=total,
        snapshot_images=total,
        checkpoint_images=total,
        **config,
    )
    return train(store, tmp_path / "run", config, seed=seed, device="cpu")


def train_and_assign(tmp_path, images: np.ndarray, channel_names: list[str], **config) -> np.ndarray:
    """Train as :func:`train_small` does, then return Q's category of every image."""
    D, _, _ = load_discriminator(train_small(tmp_path, images, channel_names, **config))
    categories, _ = assign_with_q(D, images)
    return categories


def test_q_categories_find_two_kinds_of_cells(tmp_path, one_thread):
    images, kinds = two_kinds(64)
    categories = train_and_assign(tmp_path, images, ["ch0"])
    assert np.bincount(categories, minlength=2).min() > 0, "Q puts every cell in one category"
    assert normalized_mutual_info_score(kinds, categories) >= 0.9


def spotted_cells(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB cells whose tint varies far more than anything else, half with a small dark spot near
    the centre (a parasite: 4 of the 256 pixels): images (n, 16, 16, 3) uint8 and kinds (n,) str."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    kinds = np.array(["spot", "plain"] * (n // 2))
    for i, kind in enumerate(kinds):
        img = rng.normal(225, 4, (SIZE, SIZE, 3))
        cell = disk(tuple(SIZE / 2 + rng.uniform(-1, 1, 2)), rng.uniform(5, 6.5), shape=(SIZE, SIZE))
        img[cell] = np.array([200, 150, 170]) + rng.uniform(-30, 30, 3)  # the slide's tint
        if kind == "spot":
            r, c = (SIZE // 2 - 1 + rng.integers(-1, 2, 2)).tolist()
            img[r : r + 2, c : c + 2] = (70, 40, 110)
        images[i] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    return images, kinds


def test_hand_features_and_tint_views_let_q_find_a_small_spot(tmp_path, one_thread):
    """The smears' recipe in small: Q must sort the cells by a 2x2 dark spot, not by their tint,
    in at least two of three training runs. A GAN run is a lottery, and the arithmetic of the
    CPU decides it as much as the seed: on one machine seeds 0-3 all gave NMI 1.0 (31-40 s each on
    a loaded 2-core machine); on another seed 0 gave 0.03 and seeds 1-5 gave 1.0. With neither
    ``hand_features`` nor ``tint`` Q's two categories followed the tint (NMI 0.001 / 0.003 / 0.000
    for seeds 0-2), and at the features' default weight 1 two seeds of five half-failed (NMI 0.05,
    0.3): a broken recipe fails more than one run in three."""
    images, kinds = spotted_cells(64)
    nmi = []
    for seed in range(3):
        (tmp_path / f"seed{seed}").mkdir()
        categories = train_and_assign(
            tmp_path / f"seed{seed}",
            images,
            ["R", "G", "B"],
            seed=seed,
            pair_mi_entropy=1.0,  # the two kinds are equally common
            hand_features=HandFeatures(quantiles=[0.02, 0.1], centre=0.5, weight=2.0),
            diff_augment=AugmentConfig(rot90=True, flip=True, shift=1, brightness=0.1, tint=0.15),
        )
        nmi.append(normalized_mutual_info_score(kinds, categories))
    assert sum(v >= 0.9 for v in nmi) >= 2, (
        f"NMI per seed {np.round(nmi, 3)}: Q found the spot in fewer than two"
    )


def few_labelled_samples(tmp_path, **config):
    """The few-labels recipe in small (``config/nih_cells.yaml``'s): spotted cells, 4 labelled of
    each kind and 56 loose, trained for 64,000 images with a class-conditional D (``config`` on
    top). Returns the real images and their kinds, 200 of G's (EMA) cells with the category of
    each, and the categories' names."""
    images, kinds = spotted_cells(64)
    labels = np.where(np.arange(len(kinds)) < 8, kinds, "")
    run = train_small(
        tmp_path,
        images,
        ["R", "G", "B"],
        labels=labels,
        total_images=64_000,
        conditional_d=True,
        lambda_sup=10.0,
        pair_mi_entropy=1.0,
        diff_augment=AugmentConfig(rot90=True, flip=True, shift=1, brightness=0.1, tint=0.15),
        **config,
    )
    G, spec, meta = load_generator(run, ema=True)
    latent = sample_latent(spec, 200, generator=torch.Generator().manual_seed(1))
    synthetic = generate(G, spec, latent, torch.device("cpu"))
    return images, kinds, synthetic, latent.cat[:, 0].numpy(), meta["category_labels"]


def test_a_few_labels_give_synthetic_cells_that_teach_a_classifier(tmp_path, one_thread):
    """G's cells of the few-labels recipe, labelled by the class that the labels tied to their
    category, must teach the analysis's small CNN to tell real spotted cells (drawn anew) from
    plain ones: balanced accuracy >= 0.9. While it was written (~30 s): 0.895 / 1.0 / 0.95 /
    0.94 / 0.995 for training seeds 0-4; without ``conditional_d`` 1.0 / 0.81 / 0.965 / 0.80 for
    seeds 0-3 (this test's seed 1 fails); with 32,000 images, 0.97 / 0.535 / 0.975. Near its
    threshold for some seeds: computing D's logit from the same features in another order of
    float operations took seed 1 to 0.85."""
    _, _, synthetic, cats, names = few_labelled_samples(tmp_path, seed=1)
    assert sorted(names) == ["plain", "spot"]
    test_images, test_kinds = spotted_cells(200, seed=5)
    predicted = cnn_predict(synthetic, np.asarray(names)[cats], test_images, steps=200)
    assert balanced_accuracy(test_kinds, predicted) >= 0.9


def test_mode_seeking_makes_a_category_s_samples_vary(tmp_path, one_thread):
    """``lambda_mode_seeking``: G's cells of one category must vary (mean over pixels of their sd)
    at least 0.8x as much as the real cells of one kind do. While it was written (the few-labels
    recipe, ~30 s): 1.79x and 1.87x for training seeds 0 and 1; with the term off, 0.50x and
    0.55x (nearly one cell per category whatever the noise)."""
    images, kinds, synthetic, cats, _ = few_labelled_samples(tmp_path, lambda_mode_seeking=0.2)

    def spread(x: np.ndarray) -> float:
        return float(x.astype(np.float32).reshape(len(x), -1).std(0).mean())

    made = np.mean([spread(synthetic[cats == k]) for k in range(2)])
    real = np.mean([spread(images[kinds == k]) for k in ("spot", "plain")])
    assert made >= 0.8 * real, (made, real)


def sized_cells(n: int, seed: int = 0) -> np.ndarray:
    """One kind of cell whose size varies evenly from small to large (its stain content with it),
    with jitter in position, brightness and noise: images (n, 16, 16, 1) uint8."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    for i, radius in enumerate(rng.uniform(2.5, 7, n)):
        img = rng.normal(30, 8, (SIZE, SIZE))
        img[disk(tuple(SIZE / 2 + rng.uniform(-1, 1, 2)), radius, shape=(SIZE, SIZE))] = rng.uniform(170, 210)
        images[i, ..., 0] = np.clip(img, 0, 255)
    return images


def test_a_pinned_code_becomes_a_slider_of_its_measure(tmp_path, one_thread):
    """``code_measures``: code 0 read from the stain above the background must come to set it in
    G's cells, in the direction of the readout (Spearman rho of the analysis's own ``total_ink``
    along the code, within the category). While it was written: rho +0.968 / +0.992 / +0.971 for
    training seeds 0-2 (~20 s each); with the readout's sign flipped -0.975 / -0.993 / -0.992;
    with code 0 left to Q (no pin) -0.235 / +0.871 / +0.856, a free code finding the size or not,
    in either direction, as the seed has it."""
    run = train_small(
        tmp_path,
        sized_cells(64),
        ["ink"],
        latent=LatentSpec(z_dim=4, categorical=[2], n_continuous=2),
        lambda_cont=1.0,
        code_measures=["total:ink"],
        diff_augment=AugmentConfig(rot90=True, flip=True, shift=1),
    )
    G, spec, _ = load_generator(run)
    table = traverse(
        G, spec, 2, AnalyseConfig(traversal_samples=32), tmp_path / "trav", torch.device("cpu"), ["ink"]
    )
    rho = table.set_index(["code", "feature"])["rho"]
    assert rho["c0", "total_ink"] >= 0.8, table.sort_values("rho").to_string()
