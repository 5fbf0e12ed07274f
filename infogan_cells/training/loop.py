"""Train an InfoGAN on a crop store: the training stage of the pipeline.

``train(crops_path, run_dir, config, seed=...)`` writes a run directory, each file atomically::

    config.yaml            the resolved config
    stats.jsonl            one record per tick: images seen, losses, images/s, seconds
    samples-<kimg>.png     a fixed latent grid (rows = categories, columns = continuous-code sweeps)
    samples.gif            those grids over training
    loss.png               the loss curves
    resume.pt              optimisers, counters, RNG states, EMA, learned prior (every checkpoint_images;
                           removed once network-final.pt is written)
    network-final.pt       G, EMA G, D+Q and meta (see :mod:`infogan_cells.model.checkpoint`); D's BatchNorm
                           statistics are recomputed on the real crops first (Q in eval mode reads
                           real crops); with generator_snapshots, the EMA G of earlier points too

Rerunning the same command after a kill resumes from ``resume.pt``; on the CPU the resumed run
ends bit-identical to an uninterrupted one. A finished run (``network-final.pt`` for the same
config and seed) returns at once.

The whole crop set lives on the training device as one uint8 tensor; batches are indexed there
and augmented as tensors, so no data loader or per-sample Python runs in the loop. Randomness
comes from ``torch.Generator`` objects made from ``seed`` (never torch's global RNG).

Checkpoint meta written here, beside what :func:`~infogan_cells.model.checkpoint.save_network` needs:
``channel_names``, ``img_size``, ``category_prior`` (one probability list per categorical code:
the learned prior, or uniform), ``category_labels`` (label names of categories 0..n-1 when
semi-supervised, else empty), ``holdout`` (store rows kept out of training), ``images_seen``, ``seed``, ``config`` (resolved config YAML),
``train_config`` (the TrainConfig YAML that identifies the run), ``n_crops``, ``device``, ``tf32``,
``bf16``, ``torch``.
"""

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from infogan_cells._io import write_text_atomic
from infogan_cells.config import TrainConfig, dump_config, to_dict
from infogan_cells.errors import ConfigError
from infogan_cells.model.augment import to_float
from infogan_cells.model.checkpoint import (
    FINAL_NAME,
    host_state,
    load_payload,
    resolve_device,
    resolve_precision,
    save_network,
)
from infogan_cells.training.averaging import effective_prior, recalibrate_batchnorm
from infogan_cells.training.data import Batches, load_crops
from infogan_cells.training.parts import advance, build_parts
from infogan_cells.training.rundir import (
    RESUME_NAME,
    STATS_NAME,
    ResumeState,
    check_same_run,
    grid_latent,
    read_stats,
    run_identity,
    save_snapshot,
    snapshot_points,
    write_stats,
)
from infogan_cells.training.split import hidden_and_categories, split_largest

__all__ = ["train"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _device_flags(device: torch.device, tf32: bool):
    """On CUDA: TF32 for matmuls and convolutions as asked (a recorded choice), and cuDNN's
    autotuner (every shape in the loop is static); restored afterwards."""
    if device.type != "cuda":
        yield
        return
    old = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = old


def _check_config(config: TrainConfig) -> None:
    """The config's own cross-field rules (:meth:`TrainConfig.check`), for a TrainConfig built in code."""
    config.check("train.")


def _show_tick(rec: dict, pbar: Any) -> None:
    """One tick's record as a log line, and on the progress bar when there is one."""
    log.info(
        "kimg %.1f  D %.3f  G %.3f  Q cat %.3f cont %.3f  %.0f img/s",
        rec["kimg"],
        rec["Loss/D/adv"],
        rec["Loss/G/adv"],
        rec["Loss/Q/cat"],
        rec["Loss/Q/cont"],
        rec["images_per_s"],
    )
    if pbar is not None:
        pbar.set_postfix(
            {
                "img/s": f"{rec['images_per_s']:.0f}",
                "D": f"{rec['Loss/D/adv']:.2f}",
                "G": f"{rec['Loss/G/adv']:.2f}",
                "Q": f"{rec['Loss/Q/cat']:.2f}",
            }
        )


def _save_resume(path: Path, state: ResumeState) -> None:
    """Write the resume state (tests replace this to simulate a kill after a checkpoint)."""
    state.save(path)


def train(
    crops_path: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    seed: int,
    device: str = "auto",
    progress: bool = False,
    resolved_config: Any = None,
) -> Path:
    """Train an InfoGAN on the crops in ``crops_path``; write (or resume, or find) ``run_dir``.

    ``seed`` fixes the initial weights, batches, latents and augmentations; ``resolved_config``
    (the whole pipeline :class:`~infogan_cells.config.Config`) is written as ``config.yaml``.
    Returns ``run_dir``. Raises :class:`InputError` / :class:`ConfigError` for a bad store,
    config or device.
    """
    # --- seed and device
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train(): config must be a TrainConfig, got {type(config).__name__}")
    _check_config(config)
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    spec = config.latent
    ident = run_identity(config, seed)
    final_path, resume_path, stats_path = run_dir / FINAL_NAME, run_dir / RESUME_NAME, run_dir / STATS_NAME
    if final_path.exists():
        meta = load_payload(final_path).get("meta", {})
        check_same_run(final_path, meta, ident)
        log.info("%s: already trained (%d images); nothing to do", run_dir, meta.get("images_seen", 0))
        return run_dir
    log.info(
        "training on %s in %s%s",
        dev,
        precision,
        f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "",
    )
    s_init, s_latent, s_data, s_grid, s_sup = (int(s) for s in np.random.SeedSequence(seed).generate_state(5))
    latent_gen = torch.Generator(device=dev).manual_seed(s_latent)  # latents are drawn on the device
    data_gen = torch.Generator(device=dev).manual_seed(s_data)  # batch indices and augmentation

    # --- data
    crops = load_crops(crops_path, config, dev, torch.Generator().manual_seed(s_sup))
    n_crops, channels, img_size = crops.images.shape[0], crops.images.shape[1], crops.img_size
    if crops.targets is not None and config.lambda_mode_seeking_labelled is not None:
        log.info("labelled crops supervise Q: lambda_mode_seeking %s", config.lambda_mode_seeking_labelled)
        config = dataclasses.replace(config, lambda_mode_seeking=config.lambda_mode_seeking_labelled)
    log.info(
        "%s: %d crops of %dx%d px, %d channel(s) on %s",
        crops_path,
        n_crops,
        img_size,
        img_size,
        channels,
        dev,
    )

    # --- networks and optimisers
    parts = build_parts(
        config, img_size, channels, dev, torch.Generator().manual_seed(s_init), crops.channel_names
    )
    G, D, G_ema, opt_G, opt_D = parts.G, parts.D, parts.G_ema, parts.opt_G, parts.opt_D
    if D.trunk.pins is not None:  # the pinned codes' fixed line: each measure's mean and sd on the crops
        D.trunk.pins.calibrate(to_float(crops.images[i : i + 512]) for i in range(0, n_crops, 512))
    prior = [torch.full((k,), 1.0 / k, device=dev) for k in spec.categorical]
    cur_nimg, n_steps, seconds, records = 0, 0, 0.0, []
    tick_sums: dict[str, torch.Tensor] = {}
    tick_steps = 0

    # --- resume
    mined = None  # the pair term's neighbours, once mined from D's features
    kept: list[dict] = []  # the generator's weights at the points of snapshot_points(), so far
    if resume_path.exists():
        state = ResumeState.load(resume_path, ident)
        G.load_state_dict(state.G)
        D.load_state_dict(state.D)
        if G_ema is not None:
            G_ema.load_state_dict(state.G_ema)
        opt_G.load_state_dict(state.opt_G)
        opt_D.load_state_dict(state.opt_D)
        if state.device_type == dev.type:
            latent_gen.set_state(state.latent_rng)
            data_gen.set_state(state.data_rng)
        else:
            log.warning(
                "%s: saved on %s, resuming on %s: batches after the resume differ from an uninterrupted run",
                resume_path,
                state.device_type,
                dev.type,
            )
            latent_gen.manual_seed(s_latent + state.cur_nimg)
            data_gen.manual_seed(s_data + state.cur_nimg)
        prior = [p.to(dev) for p in state.prior]
        cur_nimg, n_steps, seconds = state.cur_nimg, state.n_steps, state.seconds
        tick_sums = {k: v.to(dev) for k, v in state.tick_sums.items()}
        tick_steps = state.tick_steps
        mined = state.neighbours
        kept = list(state.snapshots)
        records = read_stats(stats_path, cur_nimg)
        log.info("%s: resuming at %d images", resume_path, cur_nimg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        config_text = dump_config(resolved_config)
    else:
        config_text = yaml.safe_dump({"device": device, "train": to_dict(config)}, sort_keys=False)
    write_text_atomic(run_dir / "config.yaml", config_text)
    write_stats(stats_path, records)

    # --- fixed latent grid
    grid, grid_cols = grid_latent(spec, s_grid)

    # --- loop
    B = config.batch_size
    batches = Batches(crops, config, data_gen, latent_gen, neighbours=mined)
    want_q_real = config.prior == "learned"
    prior_start = int(config.prior_warmup * config.total_images)
    keep_at = snapshot_points(config.total_images, config.generator_snapshots)
    split_every = int(config.split_every * config.total_images) if config.split_largest else 0
    pbar = None
    if progress:
        from infogan_cells.progress import progress as progress_bar  # a bar on a terminal, else log lines

        pbar = progress_bar(config.total_images, "train", unit="img", initial=cur_nimg)
    t_tick = time.perf_counter()
    with _device_flags(dev, config.tf32):
        while cur_nimg < config.total_images:
            # --- one step: every draw and update stays on the device (no host sync until a tick)
            learned = want_q_real and cur_nimg >= prior_start
            terms = advance(
                parts, batches, prior, config, n_steps=n_steps, learned=learned, generator=data_gen
            )
            for k, v in terms.items():
                tick_sums[k] = tick_sums[k] + v if k in tick_sums else v.clone()
            tick_steps += 1
            prev, cur_nimg, n_steps = cur_nimg, cur_nimg + B, n_steps + 1
            if pbar is not None:
                pbar.update(B)
            done = cur_nimg >= config.total_images

            def crossed(every: int) -> bool:
                return cur_nimg // every > prev // every  # noqa: B023

            # --- snapshots (the only host syncs: the tick's means, the sample grid)
            if crossed(config.tick_images) or done:
                rec = {k: v.item() / tick_steps for k, v in tick_sums.items()}
                now = time.perf_counter()
                dt = now - t_tick
                seconds += dt
                rec = {
                    "images_seen": cur_nimg,
                    "kimg": cur_nimg / 1000,
                    "seconds": round(seconds, 3),
                    "images_per_s": round(tick_steps * B / max(dt, 1e-9), 2),
                    **rec,
                }
                if dev.type == "cuda":
                    rec["gpu_max_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
                if want_q_real:
                    rec["category_prior"] = [
                        round(v, 5) for v in effective_prior(prior, config.prior_floor)[0].tolist()
                    ]
                records.append(rec)
                write_stats(stats_path, records)
                _show_tick(rec, pbar)
                tick_sums, tick_steps = {}, 0
                t_tick = time.perf_counter()
            if crossed(config.snapshot_images) or done:
                t0 = time.perf_counter()
                save_snapshot(
                    run_dir, G_ema if G_ema is not None else G, grid, grid_cols, spec, cur_nimg, records, dev
                )
                t_tick += time.perf_counter() - t0  # snapshot time is not training time

            # --- the generator kept for the ensemble of generator_snapshots (one copy per point:
            # a short run may pass two in one step)
            for _ in (p for p in keep_at if prev < p <= cur_nimg):
                kept.append(host_state(G_ema if G_ema is not None else G))

            # --- the pair term's neighbours, mined again from D's features (before a checkpoint keeps them)
            if batches.refresh_every and crossed(batches.refresh_every) and not done:
                batches.refresh_neighbours(D, cur_nimg)
                mined = batches.neighbours

            # --- an oversized category cut in two (before a checkpoint keeps the new rows)
            if split_every and crossed(split_every) and not done:
                hidden, cats = hidden_and_categories(D, crops.images, B)
                pair = split_largest(D, opt_D, hidden, cats, config.split_largest)
                if pair is not None:
                    log.info(
                        "%d images: category %d cut in two, category %d given up for it", cur_nimg, *pair
                    )

            # --- checkpoint
            if crossed(config.checkpoint_images) and not done:
                t0 = time.perf_counter()
                state = ResumeState(
                    **ident,
                    device_type=dev.type,
                    cur_nimg=cur_nimg,
                    n_steps=n_steps,
                    seconds=seconds,
                    G=G.state_dict(),
                    D=D.state_dict(),
                    G_ema=G_ema.state_dict() if G_ema is not None else None,
                    opt_G=opt_G.state_dict(),
                    opt_D=opt_D.state_dict(),
                    latent_rng=latent_gen.get_state(),
                    data_rng=data_gen.get_state(),
                    prior=prior,
                    tick_sums=tick_sums,
                    tick_steps=tick_steps,
                    neighbours=mined,
                    snapshots=kept,
                )
                _save_resume(resume_path, state)
                t_tick += time.perf_counter() - t0
    if pbar is not None:
        pbar.close()

    # --- checkpoint: the final network (D's BatchNorm statistics from real crops, for Q in eval mode)
    recalibrate_batchnorm(D, crops.images, config.batch_size, torch.Generator().manual_seed(s_grid))
    labels = crops.label_names
    meta = {
        **ident,
        "channel_names": crops.channel_names,
        "img_size": img_size,
        "category_prior": [
            p.tolist()
            for p in (
                effective_prior(prior, config.prior_floor)
                if config.prior == "learned"
                else [torch.full((k,), 1.0 / k) for k in spec.categorical]
            )
        ],
        "category_labels": labels,
        "holdout": crops.holdout,
        "images_seen": cur_nimg,
        "config": config_text,
        "n_crops": n_crops,
        "device": str(dev),
        "tf32": bool(config.tf32 and dev.type == "cuda"),
        "precision": precision,
        "bf16": precision == "bf16",
        "torch": str(torch.__version__),
        "seconds": round(seconds, 3),
    }
    save_network(final_path, G=G, D=D, G_ema=G_ema, meta=meta, snapshots=kept)
    resume_path.unlink(missing_ok=True)  # the finished network supersedes it
    log.info("%s: trained on %d images in %.0f s", final_path, cur_nimg, seconds)
    return run_dir
