"""How close synthetic crops come to real ones, without any downloaded network.

Distances between feature sets: the Fréchet distance (as FID, on any features), the kernel
inception distance (KID: unbiased MMD² with the cubic polynomial kernel, Bińkowski et al. 2018),
and k-NN precision and recall (Kynkäänniemi et al. 2019). Features come from cell morphology or
from :class:`Encoder`, a small convolutional autoencoder trained here on the real crops; its
bottleneck is the feature vector.

Also a memorisation check (how near synthetic crops come to training crops, compared with
how near held-out real crops come) and classifiers for train-on-synthetic, test-on-real accuracy
(classification accuracy score, Ravuri & Vinyals 2019): :class:`SmallCNN` trained on the pixels
(the headline figure), and a logistic regression on encoder features. Besides accuracy,
:func:`balanced_accuracy` (the mean recall over classes), which a classifier that always answers
the commonest class cannot inflate on an imbalanced test set: it scores 1/K.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from infogan_cells.config import AugmentConfig
from infogan_cells.model.augment import augment_batch, to_float

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Distances between feature sets


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D).

    ``|mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr((S_a^½ S_b S_a^½)^½)``; the trace term comes
    from symmetric eigenvalues, so it stays real for singular covariances.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N, D) feature sets with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = _sqrt_psd(s_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s_b @ root), 0, None)).sum()
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross, 0.0))


def kernel_distance(
    a: np.ndarray, b: np.ndarray, *, n_subsets: int = 50, subset_size: int = 1000, rng: np.random.Generator
) -> tuple[float, float]:
    """KID: the unbiased MMD² between ``a`` and ``b`` with kernel ``(x·y / D + 1)³``.

    Averaged over ``n_subsets`` random subsets of ``min(subset_size, N, M)`` rows each; returns
    ``(mean, std)``. About 0 (and may be slightly negative) for samples of one distribution.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"need at least 2 rows in each set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        mmd = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1))
        values.append(mmd - 2 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float32 (matrix products: fast on many pixels)."""
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    return torch.cdist(ta, tb).numpy()


def _kth_neighbour_radius(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    k = min(k, len(x) - 1)
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d = _distances(x[i : i + chunk], x)
        d[np.arange(len(d)), np.arange(i, i + len(d))] = -1.0  # itself sorts first, whatever rounding says
        out[i : i + chunk] = np.partition(d, k, axis=1)[:, k]
    return out


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    inside = np.zeros(len(points), dtype=bool)
    for i in range(0, len(points), chunk):
        inside[i : i + chunk] = (_distances(points[i : i + chunk], centres) <= radii[None, :]).any(axis=1)
    return inside


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Precision: the share of fake points inside the real manifold (the union of balls around
    each real point reaching its k-th nearest real neighbour); recall: the share of real points
    inside the fake manifold.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"need at least 2 rows in each set, got {len(real)} and {len(fake)}")
    precision = _covered(fake, real, _kth_neighbour_radius(real, k)).mean()
    recall = _covered(real, fake, _kth_neighbour_radius(fake, k)).mean()
    return float(precision), float(recall)


def nearest_distance(query: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance from each row of ``query`` to its nearest row of ``reference``."""
    out = np.empty(len(query))
    for i in range(0, len(query), chunk):
        out[i : i + chunk] = _distances(query[i : i + chunk], reference).min(axis=1)
    return out


def memorisation(synthetic: np.ndarray, holdout: np.ndarray, train: np.ndarray) -> dict:
    """Median distance to the nearest training crop, of synthetic crops and of held-out real ones.

    ``ratio`` = synthetic / held-out; well below 1 means the generator copies training crops.
    """
    syn = float(np.median(nearest_distance(synthetic, train)))
    hold = float(np.median(nearest_distance(holdout, train)))
    return {"median_synthetic": syn, "median_holdout": hold, "ratio": syn / hold if hold > 0 else None}


# --------------------------------------------------------------------------------------
# A feature encoder trained on the real crops


class Encoder(nn.Module):
    """A convolutional autoencoder for (B, C, H, W) images in [-1, 1]; ``encode`` gives (B, dim)."""

    def __init__(self, channels: int, img_size: int, dim: int = 64, width: int = 32):
        super().__init__()
        n = max(1, int(np.log2(img_size / 4)))
        chans = [min(width * 2**i, 128) for i in range(n)]
        enc: list[nn.Module] = []
        cin = channels
        for cout in chans:
            enc += [nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
            cin = cout
        self.side = img_size // 2**n
        self.features = nn.Sequential(*enc, nn.Flatten(), nn.Linear(cin * self.side**2, dim))
        dec: list[nn.Module] = []
        for cout in [*chans[::-1][1:], channels]:
            dec += [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
            dec += [nn.BatchNorm2d(cout), nn.ReLU()] if cout != channels else [nn.Tanh()]
            cin = cout
        self.expand = nn.Linear(dim, chans[-1] * self.side**2)
        self.decoder = nn.Sequential(*dec)
        self._c_last = chans[-1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(self.encode(x)).view(len(x), self._c_last, self.side, self.side)
        return self.decoder(h)


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1], as the networks were trained."""
    return to_float(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def train_encoder(
    images: np.ndarray,
    *,
    epochs: int,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[Encoder, float]:
    """Train an :class:`Encoder` on ``images`` (N, H, W, C) uint8 to reconstruct them (MSE).

    Returns the encoder in eval mode and the last epoch's mean loss. The global RNG is left
    as it was: initialisation and shuffling draw from ``seed``.
    """
    n, h, _, c = images.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = Encoder(c, h).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    data = to_unit_range(images)
    batch_size = max(2, min(batch_size, n))  # BatchNorm needs two samples
    loss_value = float("nan")
    enc.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n - 1, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue
            x = data[idx].to(device)
            loss = torch.mean((enc(x) - x) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        loss_value = total / max(count, 1)
        log.debug("encoder epoch loss %.4f", loss_value)
    return enc.eval(), loss_value


@torch.no_grad()
def encode(enc: Encoder, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Encoder features (N, dim) of ``images`` (N, H, W, C) uint8."""
    device = next(enc.parameters()).device
    parts = [
        enc.encode(to_unit_range(images[i : i + batch_size]).to(device)).cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, enc.features[-1].out_features), np.float32)


# --------------------------------------------------------------------------------------
# Train on synthetic, test on real


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """Mean over the classes of ``y_true`` of the share of that class predicted as itself (recall);
    ``None`` for an empty test set. Always answering one class scores 1/K for K classes."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape}, {y_pred.shape}")
    if len(y_true) == 0:
        return None
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in np.unique(y_true)]))


def classifier_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float | None:
    """Accuracy on the test set of a standardised logistic regression fitted to the training set.

    ``None`` when the training set holds fewer than two classes or the test set is empty.
    """
    if len(set(np.asarray(y_train).tolist())) < 2 or len(y_test) == 0:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
    for w in caught:
        log.warning("logistic regression: %s", w.message)
    return float((model.predict(x_test) == np.asarray(y_test)).mean())


# --------------------------------------------------------------------------------------
# A small convolutional classifier (train on synthetic, test on real)


class SmallCNN(nn.Module):
    """Three 3x3 convolution blocks (BatchNorm, ReLU, 2x2 max-pool), then global average and max
    pooling (a small object anywhere in the crop, like a parasite, reaches the max) and a linear
    layer. For (B, C, H, W) images in [-1, 1]."""

    def __init__(self, channels: int, n_classes: int, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for cout in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def cnn_accuracy(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    balanced: bool = False,
    **kwargs,
) -> float | None:
    """Accuracy (balanced accuracy with ``balanced``) on ``x_test`` of :func:`cnn_predict`'s
    classifier; ``None`` when it cannot be trained or the test set is empty."""
    pred = cnn_predict(x_train, y_train, x_test, **kwargs)
    if pred is None or len(y_test) == 0:
        return None
    if balanced:
        return balanced_accuracy(np.asarray(y_test), pred)
    return float((pred == np.asarray(y_test)).mean())


def cnn_seed_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, seeds: int, **kwargs
) -> dict[str, list[float]] | None:
    """Accuracy and balanced accuracy on ``x_test`` of :func:`cnn_predict`'s classifier trained from
    each of seeds ``0 .. seeds - 1`` (one list per measure, a value per seed; ``kwargs`` go to
    :func:`cnn_predict`). One classifier's figure can swing by 0.2 with its seed where the training
    set is ambiguous, so figures should be means over several. ``None`` when the classifier cannot
    be trained (fewer than two classes) or the test set is empty."""
    y_test = np.asarray(y_test)
    if len(y_test) == 0:
        return None
    preds = [cnn_predict(x_train, y_train, x_test, seed=s, **kwargs) for s in range(seeds)]
    if preds[0] is None:
        return None
    return {
        "accuracy": [float((p == y_test).mean()) for p in preds],
        "balanced_accuracy": [balanced_accuracy(y_test, p) for p in preds],
    }


def cnn_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    steps: int = 400,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dihedral: bool = True,
    groups: np.ndarray | None = None,
) -> np.ndarray | None:
    """Labels predicted for ``x_test`` by a :class:`SmallCNN` trained on ``x_train`` ((N, H, W, C) uint8).

    Classes are balanced by sampling (each batch draws classes equally often, so a rare class is
    not ignored); with ``groups`` (N,), every (class, group) pair is drawn equally often within its
    class (real and synthetic crops of a class, say, half each). With ``dihedral`` every training
    batch is randomly rotated by 90-degree steps and flipped (cells have no orientation).
    ``steps`` batches whatever the training set's size, so classifiers trained on sets of different
    sizes (synthetic, real) get the same budget. ``None`` when the training set holds fewer than two
    classes. The global RNG is left as it was: everything draws from ``seed``.
    """
    classes, y_idx = np.unique(np.asarray(y_train), return_inverse=True)
    if len(classes) < 2:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(x_train.shape[3], len(classes)).to(device)
    gen = torch.Generator().manual_seed(seed)
    data, targets = to_unit_range(x_train), torch.from_numpy(y_idx).long()
    _, cell = np.unique(
        np.stack(
            [
                y_idx,
                np.zeros_like(y_idx)
                if groups is None
                else np.unique(np.asarray(groups), return_inverse=True)[1],
            ]
        ),
        axis=1,
        return_inverse=True,
    )
    cell = cell.reshape(-1)
    per_class = np.array([len(np.unique(cell[y_idx == c])) for c in range(len(classes))])
    weights = torch.from_numpy(1.0 / (np.bincount(cell)[cell] * per_class[y_idx])).double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    aug = AugmentConfig(rot90=dihedral, flip=dihedral, shift=0)
    model.train()
    for _ in range(steps):
        idx = torch.multinomial(weights, max(2, batch_size), replacement=True, generator=gen)
        x = augment_batch(data[idx], aug, gen).to(device)
        loss = nn.functional.cross_entropy(model(x), targets[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        test = to_unit_range(x_test)
        pred = [model(test[i : i + 256].to(device)).argmax(1).cpu() for i in range(0, len(test), 256)]
    return classes[torch.cat(pred).numpy()] if pred else classes[:0]
