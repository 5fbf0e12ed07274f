"""InfoGAN networks: a DCGAN-style generator, and a discriminator trunk shared by the D and Q heads.

Nothing here knows about data, optimisers or files. Every class is built from explicit sizes and
one :class:`~infogan_cells.config.LatentSpec`; ``kwargs`` records those sizes so a checkpoint can
rebuild the network (``Generator(**kwargs)``).

Known pitfalls of public InfoGAN ports that this module avoids on purpose:

* Q's categorical head returns raw logits: cross-entropy applies the softmax once.
* BatchNorm keeps its default ``eps``; nothing passes a momentum where ``eps`` goes.
* Q's continuous head is an unbounded mean plus a clamped log-sigma, so codes in [-r, r]
  are reachable (no sigmoid squashing to [0, 1]).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from infogan_cells.config import LatentSpec
from infogan_cells.model.measures import PinnedCodes

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -5.0, 2.0

SpecArg = LatentSpec | dict  # a spec, or its dict as a checkpoint's ``kwargs`` hold it


def _n_levels(img_size: int) -> int:
    levels = math.log2(img_size / 4)
    if img_size < 8 or levels != int(levels):
        raise ValueError(f"img_size must be a power of two >= 8 (32, 64, 128...), got {img_size}")
    return int(levels)


def _spec_dict(spec: SpecArg) -> dict:
    return dataclasses.asdict(spec) if isinstance(spec, LatentSpec) else dict(spec)


def _record(net: nn.Module, spec: SpecArg, **sizes) -> None:
    """Set ``net.spec``, and ``net.kwargs``: the constructor arguments a checkpoint rebuilds ``net`` from."""
    net.spec = spec if isinstance(spec, LatentSpec) else LatentSpec(**spec)
    net.kwargs = dict(spec=_spec_dict(spec), **sizes)


class Generator(nn.Module):
    """G: latent vector (B, spec.input_dim) -> image (B, C, H, W) in [-1, 1].

    A linear layer to a 4x4 map, then stride-2 transposed convolutions, each with BatchNorm and
    ReLU, halving the channels; ``width`` is the channel count of the last hidden layer.
    """

    def __init__(
        self, spec: SpecArg, img_size: int = 64, channels: int = 3, width: int = 64, max_width: int = 512
    ):
        super().__init__()
        _record(self, spec, img_size=img_size, channels=channels, width=width, max_width=max_width)
        n = _n_levels(img_size)
        chans = [min(width * 2 ** (n - 1 - i), max_width) for i in range(n)]  # 4x4 ... H/2
        self.img_size, self.channels = img_size, channels
        self.fc = nn.Sequential(
            nn.Linear(self.spec.input_dim, chans[0] * 16, bias=False),
            nn.BatchNorm1d(chans[0] * 16),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self._c0 = chans[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x).view(x.shape[0], self._c0, 4, 4)
        return self.net(h)


class GeneratorEnsemble(nn.Module):
    """Generators of one latent space drawing as one: row ``r`` of a batch is drawn by member
    ``r % len(members)``, so every batch draws from the members in equal parts.

    One run's EMA generator draws nearly one cell per category; the same generator kept at other
    points of training draws other cells (``train.generator_snapshots``, *docs/benchmarks.md*).
    Each member sees a fixed share of every batch, so a row's output depends on its position and
    the batch's size only, as for one :class:`Generator`.
    """

    def __init__(self, members: list[Generator]):
        super().__init__()
        if not members:
            raise ValueError("GeneratorEnsemble needs at least one generator")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.spec, self.kwargs = first.spec, first.kwargs
        self.img_size, self.channels = first.img_size, first.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.members)
        if not len(x):
            return self.members[0](x)
        out = None
        for m, G in enumerate(self.members[: len(x)]):
            y = G(x[m::n])
            if out is None:
                out = y.new_empty(len(x), *y.shape[1:])
            out[m::n] = y
        return out


def generators_of(G: Generator | GeneratorEnsemble) -> list[Generator]:
    """The generators that draw for ``G``, oldest first: an ensemble's members, else ``G`` itself."""
    return list(G.members) if isinstance(G, GeneratorEnsemble) else [G]


@dataclasses.dataclass
class QOutput:
    """Q's estimate of the codes: raw logits per categorical code, and a Gaussian per continuous code."""

    cat_logits: list[torch.Tensor]
    cont_mu: torch.Tensor
    cont_log_sigma: torch.Tensor
    over_logits: torch.Tensor | None = None  # the auxiliary over-clustering head (IIC), when D has one


def _quantiles(x: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Quantiles ``qs`` of ``x`` along its last dimension, linearly interpolated as
    ``torch.quantile`` does, (len(qs), *x.shape[:-1]); through one sort, so any size works
    (``torch.quantile`` refuses inputs over 2**24 elements: a large GPU batch at 128 px)."""
    s = x.sort(dim=-1).values
    pos = torch.tensor(qs, dtype=x.dtype, device=x.device) * (x.shape[-1] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(x.shape[-1] - 1)
    frac = (pos - lo).view(-1, *([1] * (x.dim() - 1)))
    return torch.lerp(s[..., lo].movedim(-1, 0), s[..., hi].movedim(-1, 0), frac)


class HandStats(nn.Module):
    """Per-channel numbers of an image batch (B, C, H, W) in [-1, 1] -> (B, n): quantiles of the
    centre window (less the channel's median over the image when ``relative``) and means over the
    whole image (their logarithm when ``log``), standardised by BatchNorm and scaled to carry as much
    input variance as ``n_feat`` convolutional features (times ``weight``). Differentiable
    (quantiles through the sort), computed in fp32."""

    def __init__(
        self,
        n_feat: int,
        channels: list[int],
        quantiles: list[float] = (),
        mean: bool = False,
        centre: float = 0.5,
        relative: bool = True,
        log: bool = False,
        weight: float = 1.0,
    ):
        super().__init__()
        self.channels, self.quantiles, self.mean = list(channels), [float(q) for q in quantiles], mean
        self.log = log
        self.centre, self.relative = float(centre), relative
        self.n_out = len(self.channels) * (len(self.quantiles) + int(mean))
        if self.n_out == 0:
            raise ValueError("HandStats needs channels and at least one quantile or the mean")
        self.norm = nn.BatchNorm1d(self.n_out, affine=False)
        self.gain = float(weight) * math.sqrt(n_feat / self.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.channels].float()
        B, C, H, W = x.shape
        flat = x.reshape(B, C, H * W)
        out = []
        if self.quantiles:
            h, w = max(1, round(H * self.centre)), max(1, round(W * self.centre))
            top, left = (H - h) // 2, (W - w) // 2
            win = x[:, :, top : top + h, left : left + w].reshape(B, C, h * w)
            q = _quantiles(win, self.quantiles)  # (Q, B, C)
            if self.relative:
                q = q - flat.median(dim=2).values
            out.append(q.permute(1, 0, 2).reshape(B, -1))
        if self.mean:
            m = flat.mean(dim=2)
            out.append(torch.log((m + 1) / 2 + 1e-3) if self.log else m)
        with torch.autocast(x.device.type, enabled=False):
            return self.norm(torch.cat(out, dim=1)) * self.gain


class Trunk(nn.Sequential):
    """D's convolutional trunk; with ``stats`` its output is the flattened features followed by the
    hand-chosen numbers of the same images, and with ``pins`` then by the pinned codes' readouts
    (which only Q's continuous means use: :class:`Columns` keeps them from the heads). The
    convolutions keep their ``Sequential`` indices, so checkpoints without either load as before."""

    def __init__(
        self, layers: list[nn.Module], stats: HandStats | None = None, pins: PinnedCodes | None = None
    ):
        super().__init__(*layers)
        self.n_layers = len(layers)
        self.stats = stats  # registered after the layers: forward skips them
        self.pins = pins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in itertools.islice(self._modules.values(), self.n_layers):
            h = layer(h)
        if self.stats is None and self.pins is None:
            return h
        extra = [m(x).to(h.dtype) for m in (self.stats, self.pins) if m is not None]
        return torch.cat([h.flatten(1), *extra], dim=1)


class Columns(nn.Flatten):
    """Flatten, then keep the first ``n`` features (the heads' inputs, not the pinned readouts).
    A Flatten subclass without parameters, so the heads' state-dict keys are those of before."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, : self.n]


class Discriminator(nn.Module):
    """D and Q on one shared convolutional trunk.

    ``trunk(x)`` maps images (B, C, H, W) in [-1, 1] to features; ``d_head`` gives a real/fake
    logit (B,), and ``d_logit`` the same plus, for a class-conditional D (``conditional``), the
    projection on a given category; ``q_head`` a :class:`QOutput`. ``forward`` returns the plain
    logit and Q's output.
    """

    def __init__(
        self,
        spec: SpecArg,
        img_size: int = 64,
        channels: int = 3,
        width: int = 64,
        max_width: int = 512,
        spectral_norm: bool = False,
        q_hidden: int = 128,
        q_overcluster: int = 0,
        hand_features: dict | None = None,
        code_measures: list | None = None,
        conditional: bool = False,
    ):
        super().__init__()
        sizes = dict(img_size=img_size, channels=channels, width=width, max_width=max_width)
        _record(self, spec, **sizes, spectral_norm=spectral_norm, q_hidden=q_hidden)
        if q_overcluster:  # only when used, so checkpoints without it keep their constructor arguments
            self.kwargs["q_overcluster"] = q_overcluster
        if hand_features:  # likewise
            self.kwargs["hand_features"] = dict(hand_features)
        if code_measures and any(code_measures):  # likewise
            self.kwargs["code_measures"] = [list(c) if c else None for c in code_measures]
        if conditional:  # likewise
            if not self.spec.categorical:
                raise ValueError("a class-conditional D needs a categorical code")
            self.kwargs["conditional"] = True
        n = _n_levels(img_size)
        chans = [min(width * 2**i, max_width) for i in range(n)]  # H/2 ... 4x4
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [
            sn(nn.Conv2d(channels, chans[0], 4, 2, 1)),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers.append(sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=spectral_norm)))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        feat = chans[-1] * 16
        stats = HandStats(feat, **hand_features) if hand_features else None
        pins = None
        if "code_measures" in self.kwargs:
            codes = list(code_measures) + [None] * (self.spec.n_continuous - len(code_measures))
            n_cat = self.spec.categorical[0] if self.spec.categorical else 0
            pins = PinnedCodes(codes[: self.spec.n_continuous], self.spec.continuous_range, n_cat)
        self.trunk = Trunk(layers, stats, pins)
        feat += stats.n_out if stats is not None else 0
        self.n_feat = feat  # the heads' inputs; the pinned readouts follow them in the trunk's output
        self.d_head = nn.Sequential(Columns(feat), sn(nn.Linear(feat, 1)))
        # the projection discriminator's class embedding (Miyato & Koyama 2018): D also asks
        # whether an image looks like a real cell of the category it is said to be
        self.d_embed = sn(nn.Linear(self.spec.categorical[0], feat, bias=False)) if conditional else None
        n_out = self.spec.n_cat_dims + 2 * self.spec.n_continuous
        self.q_net = nn.Sequential(
            Columns(feat),
            nn.Linear(feat, q_hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(q_hidden, max(n_out, 1)),
        )
        # an auxiliary categorical head on Q's hidden layer with more categories than the code
        # (IIC's over-clustering head): trained only by the pair-MI term, it shapes the features
        self.q_over = nn.Linear(q_hidden, q_overcluster) if q_overcluster else None

    def d_logit(self, h: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """D's real/fake logit (B,) in fp32 from trunk features ``h``. A class-conditional D adds
        the projection term <embed(y), features>, with ``category`` (B,) the first code's category
        of each image (G's code for generated images, Q's category for real ones); without
        ``category``, or on an unconditional D, the plain logit."""
        logit = self.d_head(h).squeeze(1)
        if self.d_embed is not None and category is not None:
            feat = self.d_head[0](h)
            onehot = F.one_hot(category, self.d_embed.in_features).to(feat.dtype)
            logit = logit + (self.d_embed(onehot) * feat).sum(1)
        return logit.float()

    def q_head(self, h: torch.Tensor) -> QOutput:
        """Q's estimate from trunk features ``h``. Under autocast the hidden layer may run in bf16;
        the last layer (logits, means, log-sigmas) always runs in fp32, and features of another
        dtype than Q's weights are cast when no autocast is active."""
        if not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.q_net[1].weight.dtype)
        hidden = self.q_net[:-1](h)
        with torch.autocast(h.device.type, enabled=False):
            hidden = hidden.float()
            out = self.q_net[-1](hidden)
            over = self.q_over(hidden) if self.q_over is not None else None
        logits, i = [], 0
        for k in self.spec.categorical:
            logits.append(out[:, i : i + k])
            i += k
        nc = self.spec.n_continuous
        mu = out[:, i : i + nc]
        log_sigma = out[:, i + nc : i + 2 * nc].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)
        pins = self.trunk.pins
        if pins is not None:  # a pinned code's mean is its measure's line, not Q's estimate
            mu = mu.clone()
            readout = h.flatten(1)[:, self.n_feat :].float()
            mu[:, pins.pinned] = pins.relative(readout, logits[0] if logits else None)
        return QOutput(logits, mu, log_sigma, over)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QOutput]:
        h = self.trunk(x)
        return self.d_head(h).squeeze(1).float(), self.q_head(h)


def init_weights(module: nn.Module, *, generator: torch.Generator | None = None) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, BatchNorm scale N(1, 0.02).

    With ``generator`` every draw comes from it (spectral norm's power-iteration vectors too), so
    a seed fixes the networks without seeding torch's global RNG.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = getattr(m, "parametrizations", None)
            weight = (
                m.parametrizations.weight.original if w is not None and hasattr(w, "weight") else m.weight
            )
            with torch.no_grad():
                nn.init.normal_(weight, 0.0, 0.02, generator=generator)
                if w is not None and hasattr(w, "weight"):
                    for p in w.weight:
                        for name in ("_u", "_v"):
                            buf = getattr(p, name, None)
                            if buf is not None:
                                buf.normal_(generator=generator)
                                buf.div_(buf.norm().clamp_min(1e-12))
                        if hasattr(p, "_power_method"):  # as torch does after its own draw
                            p._power_method(p._reshape_weight_to_matrix(weight), 15)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)
