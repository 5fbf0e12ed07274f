"""Bulk synthesis: a trained generator makes a labelled data set of synthetic cells.

:func:`synthesise` makes one shard (a contiguous range of sample indices) of a data set of
``config.n`` images (``n`` per category with ``per_category``) into HDF5, and optionally TIFF;
:func:`gather` joins the shards with HDF5 virtual datasets (nothing copied) and writes the
per-category TIFF stacks of the whole set.

The seed is a sample's identity. Sample ``k`` (a global index, from 0) is drawn from seed
``config.seed + k`` (:func:`~infogan_cells.model.latent.sample_latent_by_seed`); its category and,
with ``continuous="grid"``, its continuous codes follow from ``k`` alone. Its pixels are then
bit-identical whatever ``batch_size``, the shard layout or the number of jobs and threads, on a
given device type and software stack, because the generator only ever runs on fixed-size
micro-batches of ``config.micro_batch`` rows aligned to global indices: sample ``k`` always
sits in row ``k % M`` of micro-batch ``k // M``, rows not in the shard or step are zeros, and
on the CPU each forward pass runs single-threaded (parallelism comes from several passes at
once). Matrix and convolution kernels are chosen by the shape of their operands and by the
thread count, and round differently (about 1e-8, enough to flip a uint8 pixel now and then);
with shape, row position and thread count fixed, the only remaining input to a row's result is
the row itself, which ``tests/test_synthesise.py`` checks. Changing ``micro_batch`` or the
device type (CPU instruction set, GPU model, torch or BLAS version) can change pixels by a
grey level; both are recorded in the file.

With ``config.min_confidence`` above 0 or ``config.score_confidence``, Q scores every sample:
``obs/confidence`` is the probability that the run's Q head gives the sample's own category
(NaN when not scored), computed from the stored (quantised) pixels on the same aligned
micro-batches, so it is as reproducible as the pixels. With ``config.min_confidence`` above 0,
sample ``k`` tries the seeds ``config.seed + k + j * DRAW_STRIDE`` for draws ``j = 0, 1, ...`` in
turn (its category and grid codes stay those of ``k``) and keeps the first whose confidence
reaches the threshold; the kept seed is ``obs/seed``. Redraws are sparse, so they are packed:
samples of different micro-batches share a pass where their rows differ, each still in row
``k % M``. Which draw is kept depends on ``k`` and the network alone, so the shards and batch
sizes still agree. A sample with no passing draw within
:data:`MAX_DRAWS` stops the job, naming the best confidence seen, and nothing is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from infogan_cells import __version__
from infogan_cells.config import SynthConfig, to_dict
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.model.checkpoint import (
    file_sha256,
    load_discriminator,
    load_generator,
    network_path,
    resolve_device,
)
from infogan_cells.model.networks import generators_of
from infogan_cells.progress import progress
from infogan_cells.synthesis.gather import crop_pixel_size, write_tiff_stacks
from infogan_cells.synthesis.generate import _Generating
from infogan_cells.synthesis.hdf5 import HDF5Writer
from infogan_cells.synthesis.plan import (
    _check_shard,
    find_category_map,
    make_plan,
    read_category_map,
    shard_range,
    stack_plans,
)
from infogan_cells.synthesis.tiff import TiffImageWriter, TiffStackWriter
from infogan_cells.synthesis.writers import FORMAT, FORMAT_VERSION, BackgroundWriter, MultiWriter, Writer

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# The stage


def _remove_stale_temporaries(folder: Path, pattern: str) -> None:
    # a job killed with SIGKILL cannot clean up after itself; its rerun does
    for stale in folder.glob(f".{pattern}.*.tmp"):
        log.warning("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


def synthesise(
    run_dir: str | Path,
    out_path: str | Path,
    config: SynthConfig,
    *,
    shard: tuple[int, int] = (0, 1),
    tiff_dir: str | Path | None = None,
    per_category: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    category_map: str | Path | None = None,
) -> Path:
    """Make shard ``shard = (i, n)`` of the synthetic data set into ``out_path`` (HDF5).

    ``config.n`` is the size of the whole data set (of each category with ``per_category``);
    shard ``i`` of ``n`` holds global indices ``[i * N // n, (i + 1) * N // n)``, so the shards
    joined (:func:`gather`) are the whole set. Categories come from ``category_map`` (or
    ``category_map.csv`` beside the network file) for their label names and for
    ``config.labels``; proportions are uniform or the network's learned prior.

    With ``tiff_dir``, also writes one TIFF stack per category there (named with a shard suffix
    when ``n > 1``) and, with ``config.tiff_per_image``, one TIFF per image. (``config.tiff``
    tells the workflow whether to ask for TIFF; here ``tiff_dir`` decides.)

    Sample ``k`` is bit-identical whatever ``batch_size``, the shards and the thread count, on
    one device type (see the module docstring for how). On the CPU, torch's intra-op thread
    count is 1 while this runs (restored after), and that many passes run at once instead.
    Every output is written atomically; an existing output is refused unless ``overwrite``.
    Returns ``out_path``.
    """
    out_path = Path(out_path)
    if config.n < 1:
        raise InputError(f"synthesis.n: {config.n} must be >= 1")
    for key in ("batch_size", "micro_batch"):
        if getattr(config, key) < 1:
            raise InputError(f"synthesis.{key}: {getattr(config, key)} must be >= 1")
    if not 0 <= config.min_confidence < 1:
        raise ConfigError(
            f"config key 'synthesis.min_confidence': {config.min_confidence!r} must be in [0, 1)"
        )
    shard = _check_shard(shard)
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path}: already exists (pass --overwrite to replace it)")
    dev = resolve_device(device)

    G, spec, meta = load_generator(run_dir, ema=config.use_ema, device=dev, snapshots=True)
    D, _, _ = load_discriminator(run_dir, device=dev)
    model_file = network_path(run_dir)
    map_path = Path(category_map) if category_map is not None else find_category_map(run_dir)
    cmap = read_category_map(map_path, spec.categorical[0]) if map_path and spec.categorical else None
    plan = make_plan(spec, meta, config, per_category=per_category, category_map=cmap, source=str(map_path))
    start, stop = shard_range(plan.n_total, shard)
    n = stop - start
    channels = G.channels
    channel_names = [str(c) for c in meta.get("channel_names") or [f"channel_{i}" for i in range(channels)]]
    if len(channel_names) != channels:
        raise InputError(
            f"{model_file}: {len(channel_names)} channel names for a {channels}-channel generator"
        )
    image_shape = (G.img_size, G.img_size, channels)
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "shard",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device_type": dev.type,
        "model_file": model_file.name,
        "model_sha256": file_sha256(model_file),
        "config": to_dict(config),
        "per_category": bool(per_category),
        "latent_spec": dataclasses.asdict(spec),
        "category_map": None
        if cmap is None
        else [
            {
                "category": int(c),
                "label": str(r.label),
                "purity": None if pd.isna(r.purity) else float(r.purity),
            }
            for c, r in cmap.iterrows()
        ],
        "category_names": plan.names,
        "categories": plan.categories.tolist(),
        "proportions": None if plan.proportions is None else plan.proportions.tolist(),
        "n_total": plan.n_total,
        "shard_index": shard[0],
        "shard_count": shard[1],
        "start": start,
        "stop": stop,
        "pixel_size_um": crop_pixel_size(meta),
        # sample k drawn by generator (k % micro_batch) % generators (train.generator_snapshots)
        "generators": len(generators_of(G)),
    }
    info = {"format": FORMAT + "-tiff", "model_sha256": attrs["model_sha256"], "package_version": __version__}

    _remove_stale_temporaries(out_path.parent, out_path.name)
    if tiff_dir is not None:
        _remove_stale_temporaries(Path(tiff_dir), "category_*")
    writers: list[Writer] = []
    suffix = "" if shard[1] == 1 else f".shard-{shard[0]:03d}-of-{shard[1]:03d}"
    # a stack names each page's seed up front; with min_confidence the seeds are known only once
    # made, so the stacks are written from the finished HDF5 file instead
    stacks_after = tiff_dir is not None and config.min_confidence > 0
    try:
        if tiff_dir is not None and not stacks_after:
            index = np.arange(start, stop, dtype=np.int64)
            writers.append(
                TiffStackWriter(
                    tiff_dir,
                    stack_plans(index, config.seed + index, plan.category(index), plan.names),
                    image_shape=image_shape,
                    channel_names=channel_names,
                    info=info,
                    suffix=suffix,
                    overwrite=overwrite,
                    pixel_size_um=attrs["pixel_size_um"],
                )
            )
        if tiff_dir is not None and config.tiff_per_image:
            writers.append(
                TiffImageWriter(
                    tiff_dir,
                    image_shape=image_shape,
                    info=info,
                    overwrite=overwrite,
                    pixel_size_um=attrs["pixel_size_um"],
                )
            )
        writers.append(
            HDF5Writer(
                out_path,
                n=n,
                image_shape=image_shape,
                channel_names=channel_names,
                z_dim=spec.z_dim,
                n_codes=len(spec.categorical),
                n_continuous=spec.n_continuous,
                attrs=attrs,
                compression=config.compression,
                overwrite=overwrite,
            )
        )
    except BaseException:
        for w in writers:
            w.abort()
        raise

    workers = max(1, torch.get_num_threads()) if dev.type == "cpu" else 1
    log.info(
        "synthesising samples %d..%d of %d (shard %d/%d) on %s with %d worker(s) into %s",
        start,
        stop,
        plan.n_total,
        shard[0],
        shard[1],
        dev,
        workers,
        out_path,
    )
    t0, done, last = time.perf_counter(), 0, 0.0
    # closing(): on an error, stop the workers and restore torch's thread count at once
    with (
        BackgroundWriter(MultiWriter(writers)) as writer,
        contextlib.closing(
            _Generating(G, D, spec, plan, config, dev, workers).batches(start, stop)
        ) as batches,
        progress(stop - start, "synthesise", unit="img") as bar,
    ):
        for batch in batches:
            writer.write(batch)
            bar.update(len(batch))
            done += len(batch)
            if time.perf_counter() - last > 30:
                last = time.perf_counter()
                log.info("%d/%d images (%.0f/s)", done, n, done / max(last - t0, 1e-9))
    if stacks_after:
        try:
            write_tiff_stacks([out_path], tiff_dir, suffix=suffix, overwrite=overwrite)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
    log.info("made %d images in %.1f s", n, time.perf_counter() - t0)
    return out_path
