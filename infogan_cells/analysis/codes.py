"""What Q and G do with the latent codes: Q's categories for real crops, generated samples per
category, traversals of each continuous code, the category map."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from infogan_cells.analysis import quality
from infogan_cells.analysis.metrics import (
    label_scores,
    spearman_table,
)
from infogan_cells.analysis.morphology import foreground_mask, intensity_features, measure_morphology
from infogan_cells.config import AnalyseConfig, LatentSpec
from infogan_cells.data.h5ad import write_h5ad
from infogan_cells.model.latent import Latent, sample_latent, to_input
from infogan_cells.report.plots import image_grid, save_gif, save_grid
from infogan_cells.synthesis.generate import generate as generate_images

log = logging.getLogger(__name__)

TRAVERSAL_ROWS = 5
MIN_TILE = 64  # small crops are enlarged to this many pixels in figures
# Above this many pixel values k-means on pixels runs on 50 principal components instead.
PIXEL_KMEANS_LIMIT = 20_000_000


@torch.no_grad()
def assign(
    D: torch.nn.Module, images: np.ndarray, *, code: int = 0, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q's category probabilities (N, K) for categorical code ``code`` (a single column of ones
    without categorical codes), its continuous code means (N, n_continuous) and its hidden layer
    (N, q_hidden), for crops (N, H, W, C) uint8, on D's device in D's current mode."""
    device = next(D.parameters()).device
    probs, cont, hidden = [], [], []
    for i in range(0, len(images), batch_size):
        h = D.trunk(quality.to_unit_range(images[i : i + batch_size]).to(device))
        out = D.q_head(h)
        if out.cat_logits:
            probs.append(torch.softmax(out.cat_logits[code].float(), dim=1).cpu().numpy())
        else:
            probs.append(np.ones((len(out.cont_mu), 1), np.float32))
        cont.append(out.cont_mu.cpu().numpy())
        hidden.append(D.q_net[:-1](h).float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(cont), np.concatenate(hidden)


def assign_with_q(
    D, images: np.ndarray, *, code: int = 0, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Q's category for each real crop: (categories (N,) int64, probabilities (N, K) float32) of
    categorical code ``code``. D (a :class:`~infogan_cells.model.networks.Discriminator`) is put
    in eval mode; images are (N, H, W, C) uint8 crops as stored."""
    D.eval()
    if len(images) == 0:
        return np.zeros(0, np.int64), np.zeros((0, D.spec.categorical[code]), np.float32)
    probs = assign(D, images, code=code, batch_size=batch_size)[0]
    return probs.argmax(1).astype(np.int64), probs


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


def generate(
    G: torch.nn.Module, spec: LatentSpec, latent: Latent, device: torch.device, *, batch_size: int = 256
) -> np.ndarray:
    """Generated crops (N, H, W, C) uint8 for ``latent``, made as synthesis makes them
    (:func:`infogan_cells.synthesis.generate.generate`, ``batch_size`` rows a pass)."""
    return generate_images(G, to_input(spec, latent), np.arange(len(latent)), batch_size, device)


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
    return the Spearman table of code value against the generated cells' morphology (slant and
    stroke width among it) and stain content (``total_<channel>``, such as DNA).

    Each feature is ranked among its own category's samples before the categories are pooled, so
    rho measures what the code changes inside a category (a slider's effect), not how the
    categories differ from each other (which would dilute it: sizes differ more between kinds of
    cell than along any one code).

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
            lat = with_category(base, k) if spec.categorical else base
            lat = Latent(
                lat.z.repeat(len(steps), 1), lat.cat.repeat(len(steps), 1), lat.cont.repeat(len(steps), 1)
            )
            lat.cont[:, j] = torch.as_tensor(np.repeat(steps, n_s), dtype=lat.cont.dtype)
            imgs = generate(G, spec, lat, device)  # step-major: (steps * n_s, H, W, C)
            _write_traversal(out_dir, f"cat{k:02d}_code{j}", imgs.reshape(len(steps), n_s, *imgs.shape[1:]))
            values.append(lat.cont[:, j].numpy())
            masks = foreground_mask(imgs)
            totals = intensity_features(imgs, channel_names=channel_names, masks=masks).filter(like="total_")
            feats = measure_morphology(imgs, channel_names=channel_names, masks=masks)
            morph.append(pd.concat([feats, totals], axis=1).rank(pct=True))  # within the category
        feats = pd.concat(morph, ignore_index=True).drop(columns="orientation")
        tables.append(spearman_table(np.concatenate(values)[:, None], feats, code_names=[f"c{j}"]))
    return pd.concat(tables, ignore_index=True)


def with_category(latent: Latent, k: int) -> Latent:
    cat = latent.cat.clone()
    cat[:, 0] = k
    return Latent(latent.z.clone(), cat, latent.cont.clone())


def save_sample_grid(path: Path, images: np.ndarray, n_cols: int) -> np.ndarray:
    """Tile crops (N, H, W, C) uint8 into a PNG, enlarged so that a tile is at least 64 px."""
    scale = max(1, math.ceil(MIN_TILE / images.shape[1]))
    return save_grid(path, images.transpose(0, 3, 1, 2), min(n_cols, max(len(images), 1)), scale=scale)


def _write_traversal(out_dir: Path, stem: str, imgs: np.ndarray) -> None:
    """imgs: (steps, samples, H, W, C); strip rows = samples, columns = steps; GIF frames = steps."""
    rows = min(TRAVERSAL_ROWS, imgs.shape[1])
    grid = imgs[:, :rows].transpose(1, 0, 2, 3, 4).reshape(-1, *imgs.shape[2:])
    save_sample_grid(out_dir / f"{stem}.png", grid, imgs.shape[0])
    scale = max(1, math.ceil(MIN_TILE / imgs.shape[2]))
    frames = [
        image_grid(imgs[s, :rows].transpose(0, 3, 1, 2), rows).repeat(scale, 0).repeat(scale, 1)
        for s in range(len(imgs))
    ]
    save_gif(out_dir / f"{stem}.gif", frames + frames[-2:0:-1], duration_ms=150)  # back and forth
