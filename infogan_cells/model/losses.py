"""InfoGAN losses: small callables that take their weights in ``__init__`` and return named scalars.

Each call returns a dict of 0-dim tensors named like ``Loss/D/adv`` or ``Loss/Q/cat``; the
training loop adds up the ones it back-propagates and logs them all. Nothing here prints,
steps an optimiser or knows which parameters a gradient reaches: that plumbing (whether the
information loss trains D's shared trunk) lives in :mod:`infogan_cells.training.step`.

Known bugs of public InfoGAN ports that these losses avoid on purpose (see
``shared/notes/infogan-prior-art.md``):

* the categorical term is ``cross_entropy`` on Q's *raw logits* (softmax applied once, inside
  it), never on probabilities;
* the continuous term is the Gaussian negative log-likelihood of the true code under Q's mean
  and clamped log-sigma, with the mean unbounded, so codes in ``[-r, r]`` are reachable;
* the entropy ``H(c)`` of the prior is a constant with no gradient and is left out, so
  ``Loss/Q/cat`` tends to 0 (not to ``-log K``) when Q recovers the codes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infogan_cells.model.latent import Latent
from infogan_cells.model.networks import QOutput

__all__ = [
    "DiscriminatorLoss",
    "GeneratorLoss",
    "InfoLoss",
    "ModeSeekingLoss",
    "PairMILoss",
    "SupervisedLoss",
    "total",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def total(terms: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    """The sum of the named terms (the ones a backward pass uses)."""
    return sum((terms[n] for n in names), start=torch.zeros((), device=next(iter(terms.values())).device))


class DiscriminatorLoss:
    """D's adversarial loss on real and fake logits (B,).

    ``nonsaturating``: the standard GAN cross-entropy, softplus(-real) + softplus(fake).
    ``hinge``: relu(1 - real) + relu(1 + fake) (Lim & Ye 2017; pairs well with spectral norm).
    Returns ``Loss/D/adv`` (their sum) plus ``Loss/D/real`` and ``Loss/D/fake``.
    """

    def __init__(self, kind: str = "nonsaturating"):
        if kind not in ("nonsaturating", "hinge"):
            raise ValueError(f"unknown GAN loss {kind!r}")
        self.kind = kind

    def __call__(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "hinge":
            real = F.relu(1 - real_logits).mean()
            fake = F.relu(1 + fake_logits).mean()
        else:
            real = F.softplus(-real_logits).mean()
            fake = F.softplus(fake_logits).mean()
        return {"Loss/D/adv": real + fake, "Loss/D/real": real, "Loss/D/fake": fake}


class GeneratorLoss:
    """G's adversarial loss on fake logits (B,): non-saturating softplus(-fake), or -fake for hinge."""

    def __init__(self, kind: str = "nonsaturating"):
        if kind not in ("nonsaturating", "hinge"):
            raise ValueError(f"unknown GAN loss {kind!r}")
        self.kind = kind

    def __call__(self, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "hinge":
            return {"Loss/G/adv": -fake_logits.mean()}
        return {"Loss/G/adv": F.softplus(-fake_logits).mean()}


class InfoLoss:
    """The variational lower bound on I(c; G(z, c)), as a loss to minimise.

    ``lambda_cat`` * cross-entropy of each categorical code (summed over codes, mean over the
    batch) + ``lambda_cont`` * Gaussian NLL of the continuous codes (summed over codes, mean
    over the batch). Returns ``Loss/Q/info`` (the weighted total), ``Loss/Q/cat``,
    ``Loss/Q/cont`` (unweighted) and ``Acc/Q/cat``, the fraction of first-code categories Q
    gets right (detached; for the logs).
    """

    def __init__(self, lambda_cat: float = 1.0, lambda_cont: float = 0.1):
        self.lambda_cat = float(lambda_cat)
        self.lambda_cont = float(lambda_cont)

    def __call__(self, q: QOutput, latent: Latent) -> dict[str, torch.Tensor]:
        device = q.cont_mu.device
        cat = torch.zeros((), device=device)
        for j, logits in enumerate(q.cat_logits):
            cat = cat + F.cross_entropy(logits.float(), latent.cat[:, j])
        cont = torch.zeros((), device=device)
        if q.cont_mu.shape[1]:
            mu, log_sigma = q.cont_mu.float(), q.cont_log_sigma.float()
            nll = log_sigma + 0.5 * ((latent.cont - mu) * torch.exp(-log_sigma)) ** 2 + _HALF_LOG_2PI
            cont = nll.sum(dim=1).mean()
        out = {
            "Loss/Q/info": self.lambda_cat * cat + self.lambda_cont * cont,
            "Loss/Q/cat": cat,
            "Loss/Q/cont": cont,
        }
        if q.cat_logits:
            out["Acc/Q/cat"] = (q.cat_logits[0].detach().argmax(1) == latent.cat[:, 0]).float().mean()
        return out


class SupervisedLoss:
    """Semi-supervision (ss-InfoGAN): cross-entropy of Q's first categorical head on labelled real crops.

    ``targets`` (B,) int64 holds the category of each crop, or -1 where the crop is not in the
    supervised subset; the loss averages over the supervised crops of the batch (0 when the
    batch has none) without a host sync. Returns ``Loss/Q/sup`` (weighted by ``lambda_sup``).
    """

    def __init__(self, lambda_sup: float = 1.0):
        self.lambda_sup = float(lambda_sup)

    def __call__(self, cat_logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(cat_logits.float(), targets, ignore_index=-1, reduction="sum")
        n = (targets >= 0).sum().clamp(min=1)
        return {"Loss/Q/sup": self.lambda_sup * ce / n}


class PairMILoss:
    """Invariant information clustering (IIC, Ji et al. 2019) of Q's first categorical head on real crops.

    Given Q's logits for two augmented views of the same real crops, (B, K) each, maximise the
    mutual information of the two assignments, I(c1; c2) = sum P log(P / (P1 P2)) over the
    symmetrised joint P (K, K) of the batch. It rewards confident, consistent assignments of real
    crops whose marginal is spread over the categories; shared with the InfoGAN term, Q's
    categories on real crops and G's categories become the same. Returns ``Loss/Q/pair_mi``
    (``-lambda_mi * I``) and ``MI/Q/pair`` (I in nats, detached). With ``entropy_weight`` w != 1 the
    objective is w H(c) - H(c1 | c2) instead of I = H(c) - H(c1 | c2): below 1, unequal category
    sizes cost less (imbalanced data); above 1, equal sizes are rewarded more.
    """

    def __init__(self, lambda_mi: float = 1.0, entropy_weight: float = 1.0, eps: float = 1e-8):
        self.lambda_mi = float(lambda_mi)
        self.entropy_weight = float(entropy_weight)
        self.eps = eps

    def __call__(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> dict[str, torch.Tensor]:
        pa, pb = torch.softmax(logits_a.float(), 1), torch.softmax(logits_b.float(), 1)
        joint = pa.t() @ pb / pa.shape[0]
        joint = ((joint + joint.t()) / 2).clamp_min(self.eps)
        pi, pj = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
        mi = (joint * (joint.log() - pi.log() - pj.log())).sum()
        objective = mi
        if self.entropy_weight != 1.0:  # w H(c) - H(c1|c2) = I - (1 - w) H(c); IIC's ``lamb`` is (w + 1) / 2
            p = pi.squeeze(1)
            objective = mi - (1.0 - self.entropy_weight) * -(p * p.log()).sum()
        return {"Loss/Q/pair_mi": -self.lambda_mi * objective, "MI/Q/pair": mi.detach()}


class ModeSeekingLoss:
    """Mode seeking (Mao et al. 2019): G's images of the same codes should differ as their noise
    does. Given two batches of images (B, C, H, W) drawn with the same codes and noises ``z_a``,
    ``z_b`` (B, z_dim), the ratio r = mean|image_a - image_b| / mean|z_a - z_b|; the loss
    ``lambda_ms`` / (r + eps) is large when G ignores its noise (one image per category). Returns
    ``Loss/G/mode_seeking`` and ``Div/G/ratio`` (r, detached)."""

    def __init__(self, lambda_ms: float = 1.0, eps: float = 1e-5):
        self.lambda_ms = float(lambda_ms)
        self.eps = eps

    def __call__(
        self, images_a: torch.Tensor, images_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        ratio = (images_a.float() - images_b.float()).abs().mean() / (z_a - z_b).abs().mean().clamp_min(
            self.eps
        )
        return {"Loss/G/mode_seeking": self.lambda_ms / (ratio + self.eps), "Div/G/ratio": ratio.detach()}
