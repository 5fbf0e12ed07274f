"""One InfoGAN optimisation step, and the networks and optimisers it updates."""

from __future__ import annotations

import logging
from typing import Any

import torch

from infogan_cells.config import LatentSpec, TrainConfig
from infogan_cells.model import losses
from infogan_cells.model.augment import augment_batch, is_identity
from infogan_cells.model.checkpoint import (
    autocast,
    resolve_precision,
)
from infogan_cells.model.latent import Latent, to_input
from infogan_cells.model.measures import parse
from infogan_cells.model.networks import Discriminator, Generator, QOutput, init_weights

log = logging.getLogger(__name__)


def build_networks(
    spec: LatentSpec,
    img_size: int,
    channels: int,
    config: TrainConfig,
    generator: torch.Generator,
    channel_names: list[str] | None = None,
) -> tuple[Generator, Discriminator]:
    """G and D+Q, initialised from ``generator`` (torch's global RNG is left as it was).
    ``channel_names`` (default ``channel_0``, ...) resolve ``config.hand_features.channels`` and
    the channels of ``config.code_measures``."""
    names = list(channel_names) if channel_names else [f"channel_{i}" for i in range(channels)]
    hand = None
    if config.hand_features.enabled:
        hand = config.hand_features.network_kwargs(
            config.hand_features.channel_indices(names, "train.hand_features.")
        )
    measures = None
    if any(config.code_measures):
        measures = [
            parse(m, names, f"train.code_measures[{j}]") if m else None
            for j, m in enumerate(config.code_measures)
        ]
    with torch.random.fork_rng(devices=[]):  # module constructors draw default inits from it
        G = Generator(spec, img_size=img_size, channels=channels, width=config.g_channels)
        D = Discriminator(
            spec,
            img_size=img_size,
            channels=channels,
            width=config.d_channels,
            spectral_norm=config.spectral_norm,
            q_overcluster=config.q_overcluster,
            hand_features=hand,
            code_measures=measures,
            conditional=config.conditional_d,
        )
    init_weights(G, generator=generator)
    init_weights(D, generator=generator)
    return G, D


def build_optimizers(
    G: Generator, D: Discriminator, config: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for G, and Adam for all of D: trunk, D head and Q head.

    Q sits in D's optimiser with the trunk, so whether the information loss trains the trunk is
    decided by the graph (:func:`q_of_features`), never by an optimiser that leaves it out.
    """
    kw: dict[str, Any] = {"betas": (config.beta1, config.beta2)}
    if device.type in ("cuda", "cpu"):
        kw["fused"] = True  # one kernel for all parameters (CUDA; also implemented for CPU)
    return (
        torch.optim.Adam(G.parameters(), lr=config.lr_g, **kw),
        torch.optim.Adam(D.parameters(), lr=config.lr_d, **kw),
    )


def q_of_features(D: Discriminator, h: torch.Tensor, train_trunk: bool) -> QOutput:
    """Q's output on trunk features ``h``; with ``train_trunk`` False its loss stops at the Q head."""
    return D.q_head(h if train_trunk else h.detach())


class InfoGANStep:
    """One optimisation step of D+Q, then of G, on a real batch and a latent batch.

    D's step minimises the adversarial loss on real and fake, plus the information loss on the
    fake batch (it trains Q, and D's shared trunk iff ``config.info_trains_trunk``), plus the
    supervised loss on a separate batch of labelled real crops (semi-supervised runs). With
    ``config.diff_augment`` every image D and Q see (real and fake, in both steps) goes through the
    same random differentiable transforms first. G's step minimises its adversarial loss plus the
    information loss (the paper's min_G max_D V - lambda I, both players sharing L_I), plus, with
    ``config.lambda_mode_seeking``, the mode-seeking loss on half its batch drawn again with other
    noise. With ``config.conditional_d`` every adversarial logit is D's projection on a category:
    G's code for generated images, Q's (detached) argmax for real crops.
    Returns the named scalars (detached 0-dim tensors; nothing is synced to the host).
    """

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        opt_G: torch.optim.Optimizer,
        opt_D: torch.optim.Optimizer,
        spec: LatentSpec,
        config: TrainConfig,
        device: torch.device,
    ):
        self.G, self.D, self.opt_G, self.opt_D = G, D, opt_G, opt_D
        self.spec, self.config, self.device = spec, config, device
        self.d_loss = losses.DiscriminatorLoss(config.loss)
        self.g_loss = losses.GeneratorLoss(config.loss)
        self.info_loss = losses.InfoLoss(config.lambda_cat, config.lambda_cont)
        self.sup_loss = losses.SupervisedLoss(config.lambda_sup)
        self.pair_loss = losses.PairMILoss(config.lambda_pair_mi, config.pair_mi_entropy)
        self.mode_seeking = losses.ModeSeekingLoss(config.lambda_mode_seeking)
        self.precision = resolve_precision(config.precision, device)
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self._D_params = list(D.parameters())
        # the callables (compiled on CUDA when asked); G and D stay the plain modules
        self.G_fwd, self.trunk = G, D.trunk
        if config.compile and device.type == "cuda":
            self.G_fwd, self.trunk = torch.compile(G), torch.compile(D.trunk)
        elif config.compile:
            log.info("compile: ignored on %s (CUDA only)", device)

    def __call__(
        self,
        real: torch.Tensor,
        latent: Latent,
        supervised: tuple[torch.Tensor, torch.Tensor] | None = None,
        want_q_real: bool = False,
        generator: torch.Generator | None = None,
        partner: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], QOutput | None]:
        """``real`` (B, C, H, W) float in [-1, 1]; ``supervised`` (images, categories) a batch of labelled
        real crops for Q's supervised loss; ``generator`` draws the differentiable augmentation;
        ``partner`` (B, C, H, W) the IIC term's second view of each real crop (a neighbour), in place
        of a second augmentation of ``real``."""
        cfg, D, trunk = self.config, self.D, self.trunk
        real = real.contiguous(memory_format=self.memory_format)
        if is_identity(cfg.diff_augment):

            def T(x: torch.Tensor) -> torch.Tensor:
                return x
        else:
            if generator is None:
                raise ValueError("diff_augment needs a generator")

            def T(x: torch.Tensor) -> torch.Tensor:
                return augment_batch(x, cfg.diff_augment, generator)

        prec, pair, cond = self.precision, cfg.lambda_pair_mi > 0, cfg.conditional_d
        code = latent.cat[:, 0] if cond else None
        with autocast(self.device, prec):
            # G's output in fp32 before augmentation: DiffAugment's resampling is then the same
            # arithmetic for real and generated images (bf16 would quantise the fakes' grid only)
            fake = self.G_fwd(to_input(self.spec, latent)).float()
            # --- D and Q (both see T(real) and T(fake): DiffAugment)
            h_real = trunk(T(real))
            h_fake = trunk(T(fake.detach()))
            q_fake = q_of_features(D, h_fake, cfg.info_trains_trunk)
            q_real = None
            if want_q_real or pair or cond:
                q_real = q_of_features(D, h_real, cfg.info_trains_trunk)
            # a class-conditional D judges real crops as Q's category of them, fakes as their code
            real_cat = q_real.cat_logits[0].detach().argmax(1) if cond else None
            real_logits = D.d_logit(h_real, real_cat)
            fake_logits = D.d_logit(h_fake, code)
            q_sup = q_view2 = None
            if supervised is not None:
                x_sup = supervised[0].contiguous(memory_format=self.memory_format)
                q_sup = q_of_features(D, trunk(T(x_sup)), cfg.info_trains_trunk)
            if pair:
                view2 = real if partner is None else partner.contiguous(memory_format=self.memory_format)
                q_view2 = q_of_features(D, trunk(T(view2)), cfg.info_trains_trunk)
        # every loss term in fp32, outside autocast
        terms = self.d_loss(real_logits, fake_logits)
        terms.update(self.info_loss(q_fake, latent))
        d_total = losses.total(terms, "Loss/D/adv", "Loss/Q/info")
        if q_sup is not None:
            terms.update(self.sup_loss(q_sup.cat_logits[0], supervised[1]))
            d_total = d_total + terms["Loss/Q/sup"]
        if pair:
            terms.update(self.pair_loss(q_real.cat_logits[0], q_view2.cat_logits[0]))
            d_total = d_total + terms["Loss/Q/pair_mi"]
            if q_real.over_logits is not None:
                over = self.pair_loss(q_real.over_logits, q_view2.over_logits)
                terms["Loss/Q/pair_mi_over"], terms["MI/Q/pair_over"] = (
                    over["Loss/Q/pair_mi"],
                    over["MI/Q/pair"],
                )
                d_total = d_total + terms["Loss/Q/pair_mi_over"]
        self.opt_D.zero_grad(set_to_none=True)
        d_total.backward()
        self.opt_D.step()
        # --- G (D's weights need no gradient here: skip computing them)
        for p in self._D_params:
            p.requires_grad_(False)
        with autocast(self.device, prec):
            h = trunk(T(fake))
            g_logits = D.d_logit(h, code)
            q = D.q_head(h)
            twin = None
            if cfg.lambda_mode_seeking > 0:  # half the batch again, each with another's noise
                half = max(1, len(latent) // 2)
                other = Latent(latent.z[:half].roll(1, 0), latent.cat[:half], latent.cont[:half])
                twin = self.G_fwd(to_input(self.spec, other)).float()
        g_terms = self.g_loss(g_logits)
        g_info = self.info_loss(q, latent)
        g_total = g_terms["Loss/G/adv"] + g_info["Loss/Q/info"]
        if twin is not None:
            g_terms.update(self.mode_seeking(fake[:half], twin, latent.z[:half], other.z))
            g_total = g_total + g_terms["Loss/G/mode_seeking"]
        self.opt_G.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_G.step()
        for p in self._D_params:
            p.requires_grad_(True)
        terms.update(g_terms)
        terms["Loss/G/info"] = g_info["Loss/Q/info"]
        terms = {k: v.detach() for k, v in terms.items()}
        if not want_q_real:
            return terms, None
        return terms, QOutput(
            [t.detach() for t in q_real.cat_logits], q_real.cont_mu.detach(), q_real.cont_log_sigma.detach()
        )
