"""Joining shards: the master file over the shards' HDF5 files, and the TIFF stacks written from it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import yaml

from infogan_cells import __version__
from infogan_cells.config import CropConfig, from_mapping
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.synthesis.hdf5 import relative_source, write_master
from infogan_cells.synthesis.plan import stack_plans
from infogan_cells.synthesis.tiff import TiffStackWriter
from infogan_cells.synthesis.writers import FORMAT, Batch, load_hdf5_plugins

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Joining shards


def _shard_attrs(path: Path) -> dict:
    from infogan_cells.synthesis.validate import validate_file

    problems = validate_file(path)
    if problems:
        raise InputError(f"{path}: not a valid synthesis shard: {problems[0]}")
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    if attrs.get("kind") != "shard":
        raise InputError(f"{path}: is a {attrs.get('kind')!r} file, not a shard")
    return attrs


def gather(
    shards: Sequence[str | Path],
    out_path: str | Path,
    *,
    tiff_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Join shard files into ``out_path``: HDF5 virtual datasets over the shards, nothing copied.

    The shards must all come from one data set (same model, config and shard count) and be
    complete (every shard once). Sources are stored relative to ``out_path``, so the folder can
    move as a whole. With ``tiff_dir``, writes one TIFF stack per category of the whole set.
    Returns ``out_path``.
    """
    out_path = Path(out_path)
    if not shards:
        raise InputError("gather: no shard files given")
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path}: already exists (pass --overwrite to replace it)")
    shards = [Path(p) for p in shards]
    for p in shards:
        if not p.exists():
            raise InputError(f"{p}: shard file not found")
    attrs = {p: _shard_attrs(p) for p in shards}
    first_path, first = shards[0], attrs[shards[0]]
    same = ("model_sha256", "config", "per_category", "n_total", "shard_count", "category_names")
    for p, a in attrs.items():
        for key in same:
            if str(a.get(key)) != str(first.get(key)):
                raise InputError(
                    f"{p}: {key} differs from {first_path}'s: the shards are not from one data set"
                )
    count = int(first["shard_count"])
    order = sorted(shards, key=lambda p: int(attrs[p]["shard_index"]))
    indices = [int(attrs[p]["shard_index"]) for p in order]
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise InputError(
            f"gather: expected shards 0..{count - 1} once each; "
            + (f"missing {missing}" if missing else f"repeated {dup}")
        )
    master = {k: v for k, v in first.items() if k != "shard_index"}
    master.update(
        kind="master",
        start=0,
        stop=int(first["n_total"]),
        shard_files=[relative_source(p, out_path.parent) for p in order],
    )
    if tiff_dir is not None:
        # the stacks first, so the master's presence means the whole job finished
        write_tiff_stacks(order, tiff_dir, overwrite=overwrite)
    write_master(order, out_path, master, overwrite=overwrite)
    log.info("gathered %d shards (%d images) into %s", count, int(first["n_total"]), out_path)
    return out_path


def crop_pixel_size(meta: dict) -> float | None:
    """The size in micrometres of one pixel of the crops a run was trained on, from the resolved
    config in its checkpoint meta: known only with ``crop.pixel_size_um`` and ``crop.window_px``."""
    try:
        section = (yaml.safe_load(meta.get("config") or "") or {}).get("crop") or {}
        return from_mapping(CropConfig, section, "crop.").crop_pixel_size_um
    except (yaml.YAMLError, AttributeError, ConfigError):
        return None


def write_tiff_stacks(
    sources: Sequence[str | Path],
    tiff_dir: str | Path,
    *,
    suffix: str = "",
    overwrite: bool = False,
    block: int = 1024,
) -> list[Path]:
    """Write one TIFF stack per category from synthetic HDF5 files (shards in order, or one file),
    reading each once, ``block`` images at a time."""
    load_hdf5_plugins()
    sources = [Path(p) for p in sources]
    obs: dict[str, list] = {"index": [], "seed": [], "category": []}
    for path in sources:
        with h5py.File(path, "r") as f:
            for c in obs:
                obs[c].append(f["obs"][c][:])
            names = json.loads(f.attrs["category_names"])
            channel_names = [str(c) for c in f["images"].attrs["channel_names"]]
            image_shape = f["images"].shape[1:]
            info = {
                "format": FORMAT + "-tiff",
                "model_sha256": str(f.attrs["model_sha256"]),
                "package_version": __version__,
            }
            pixel_size = json.loads(str(f.attrs.get("pixel_size_um", "null")))
    cols = {c: np.concatenate(v) for c, v in obs.items()}
    plans = stack_plans(cols["index"], cols["seed"], cols["category"], names)
    offset = 0
    with TiffStackWriter(
        tiff_dir,
        plans,
        image_shape=image_shape,
        channel_names=channel_names,
        info=info,
        suffix=suffix,
        overwrite=overwrite,
        pixel_size_um=pixel_size,
    ) as writer:
        for path in sources:
            with h5py.File(path, "r") as f:
                images, n = f["images"], f["images"].shape[0]
                for a in range(0, n, block):
                    b = min(n, a + block)
                    rows = slice(offset + a, offset + b)
                    empty = np.zeros((b - a, 0), np.float32)
                    writer.write(
                        Batch(
                            offset=offset + a,
                            images=images[a:b],
                            index=cols["index"][rows],
                            seed=cols["seed"][rows],
                            category=cols["category"][rows],
                            label=np.array([names[c] for c in cols["category"][rows]], dtype=object),
                            z=empty,
                            categorical=empty,
                            continuous=empty,
                        )
                    )
            offset += n
    return writer.paths
