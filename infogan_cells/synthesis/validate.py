"""Check a synthetic HDF5 file (a shard or the master) against the layout in ``docs/hdf5.md``.

:func:`validate_file` returns one sentence per problem found, and an empty list for a valid
file; ``infogan-cells validate FILE`` prints them and exits with status 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from infogan_cells.synthesis.writers import (
    DRAW_STRIDE,
    FORMAT,
    FORMAT_VERSION,
    LATENT_COLUMNS,
    MAX_DRAWS,
    OBS_COLUMNS,
    load_hdf5_plugins,
)

_REQUIRED_ATTRS = (
    "format_version",
    "kind",
    "package_version",
    "model_file",
    "model_sha256",
    "config",
    "latent_spec",
    "category_map",
    "category_names",
    "categories",
    "n_total",
    "shard_count",
    "start",
    "stop",
)


def validate_file(path: str | Path) -> list[str]:
    """Problems with ``path`` as a synthetic data set file, each a sentence; empty when valid."""
    path = Path(path)
    if not path.exists():
        return ["The file does not exist."]
    load_hdf5_plugins()
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        return [f"It is not a readable HDF5 file ({err})."]
    with f:
        if f.attrs.get("format") != FORMAT:
            return [
                f"The root attribute 'format' is {_show(f.attrs.get('format'))}, expected '{FORMAT}': "
                "this is not a synthetic data set file."
            ]
        problems: list[str] = []
        attrs = _check_attrs(f, problems)
        if attrs is None:
            return problems
        n = _check_images(f, path, attrs, problems)
        if n is not None:
            _check_columns(f, n, attrs, problems)
        return problems


def _show(value: Any) -> str:
    return "missing" if value is None else repr(value.decode() if isinstance(value, bytes) else value)


def _json_attr(f: h5py.File, key: str, kind: type, problems: list[str]) -> Any:
    try:
        value = json.loads(f.attrs[key])
    except (TypeError, ValueError):
        problems.append(f"The root attribute '{key}' is not valid JSON.")
        return None
    if not isinstance(value, kind) and not (value is None and key == "category_map"):
        problems.append(f"The root attribute '{key}' should hold a JSON {kind.__name__}.")
        return None
    return value


def _check_attrs(f: h5py.File, problems: list[str]) -> dict | None:
    missing = [k for k in _REQUIRED_ATTRS if k not in f.attrs]
    if missing:
        problems.append(f"Root attribute(s) {', '.join(missing)} are missing.")
        return None
    a = {k: f.attrs[k] for k in f.attrs}
    if a["format_version"] != FORMAT_VERSION:
        problems.append(f"The format_version is {a['format_version']}; this version reads {FORMAT_VERSION}.")
    if a["kind"] not in ("shard", "master"):
        problems.append(f"The root attribute 'kind' is {_show(a['kind'])}, expected 'shard' or 'master'.")
    if not re.fullmatch(r"[0-9a-f]{64}", str(a["model_sha256"])):
        problems.append("The root attribute 'model_sha256' is not a SHA-256 hex digest.")
    config = _json_attr(f, "config", dict, problems)
    for key in ("latent_spec", "category_names", "categories"):
        a[key] = _json_attr(f, key, dict if key == "latent_spec" else list, problems)
    cmap = _json_attr(f, "category_map", list, problems)
    if config is None or a["latent_spec"] is None or a["category_names"] is None or a["categories"] is None:
        return None
    a["config"] = config
    for row in cmap or []:
        c = row.get("category") if isinstance(row, dict) else None
        if not isinstance(c, int) or not 0 <= c < len(a["category_names"]):
            problems.append(f"The category map has an entry {row!r} that names no category of the generator.")
        elif row.get("label") != a["category_names"][c]:
            problems.append(
                f"The category map labels category {c} {row.get('label')!r}, but "
                f"category_names says {a['category_names'][c]!r}."
            )
    n_total, count = int(a["n_total"]), int(a["shard_count"])
    start, stop = int(a["start"]), int(a["stop"])
    if a["kind"] == "shard":
        i = a.get("shard_index")
        if i is None or not 0 <= int(i) < count:
            problems.append(f"The shard_index {_show(i)} is not in 0..{count - 1}.")
        elif (start, stop) != ((int(i) * n_total) // count, ((int(i) + 1) * n_total) // count):
            problems.append(
                f"Shard {int(i)}/{count} of {n_total} samples should cover "
                f"{(int(i) * n_total) // count}..{((int(i) + 1) * n_total) // count}, "
                f"not {start}..{stop}."
            )
    elif a["kind"] == "master":
        if (start, stop) != (0, n_total):
            problems.append(f"The master file should cover 0..{n_total}, not {start}..{stop}.")
        files = _json_attr(f, "shard_files", list, problems) if "shard_files" in f.attrs else None
        if files is None or len(files) != count:
            problems.append(f"The root attribute 'shard_files' should list the {count} shard files.")
    return a


def _check_images(f: h5py.File, path: Path, a: dict, problems: list[str]) -> int | None:
    if "images" not in f or not isinstance(f["images"], h5py.Dataset):
        problems.append("The dataset 'images' is missing.")
        return None
    images = f["images"]
    if images.ndim != 4 or images.dtype != np.uint8:
        problems.append(
            f"The dataset 'images' is {images.shape} {images.dtype}; expected (N, H, W, C) uint8."
        )
        return None
    n, h, w, c = images.shape
    if images.attrs.get("axes") != "NYXC":
        problems.append(f"The attribute images.axes is {_show(images.attrs.get('axes'))}, expected 'NYXC'.")
    names = images.attrs.get("channel_names")
    if names is None or len(names) != c:
        problems.append(f"The attribute images.channel_names should name the {c} channel(s).")
    if n != int(a["stop"]) - int(a["start"]):
        problems.append(f"The file holds {n} images, but start..stop is {a['start']}..{a['stop']}.")
    if a["kind"] == "shard":
        if images.is_virtual:
            problems.append("The dataset 'images' of a shard should be stored in it, not virtual.")
        elif images.chunks is None or tuple(images.chunks[1:]) != (h, w, c):
            problems.append(
                f"The dataset 'images' should be chunked by whole images (k, {h}, {w}, {c}), "
                f"not {images.chunks}."
            )
    elif a["kind"] == "master":
        if not images.is_virtual:
            problems.append("The dataset 'images' of a master file should be a virtual dataset.")
        else:
            missing = sorted(
                {m.file_name for m in images.virtual_sources() if not (path.parent / m.file_name).exists()}
            )
            if missing:
                problems.append(
                    f"Shard file(s) {', '.join(missing)} named by the master file are missing "
                    f"(looked in {path.parent})."
                )
                return None
            _check_sources(f, path, images, a, problems)
    return n


def _check_sources(f: h5py.File, path: Path, images: h5py.Dataset, a: dict, problems: list[str]) -> None:
    for name in sorted({m.file_name for m in images.virtual_sources()}):
        try:
            with h5py.File(path.parent / name, "r") as src:
                if src.attrs.get("model_sha256") != a["model_sha256"]:
                    problems.append(f"The shard {name} was made by another model than the master file says.")
        except OSError as err:
            problems.append(f"The shard {name} cannot be read ({err}).")


def _check_columns(f: h5py.File, n: int, a: dict, problems: list[str]) -> None:
    spec, config = a["latent_spec"], a["config"]
    widths = {
        "z": spec.get("z_dim"),
        "categorical": len(spec.get("categorical", [])),
        "continuous": spec.get("n_continuous"),
    }
    values = {}
    for name in OBS_COLUMNS:
        key = f"obs/{name}"
        if key not in f:
            problems.append(f"The dataset '{key}' is missing.")
            continue
        d = f[key]
        kind = {"label": "UTF-8 strings", "confidence": "floats"}.get(name, "integers")
        if name == "label":
            ok = h5py.check_string_dtype(d.dtype) is not None
        else:
            ok = d.dtype.kind in ("f" if name == "confidence" else "iu")
        if d.shape != (n,) or not ok:
            problems.append(f"The dataset '{key}' is {d.shape} {d.dtype}; expected ({n},) {kind}.")
            continue
        values[name] = d.asstr()[:] if name == "label" else d[:]
    for name in LATENT_COLUMNS:
        key = f"latent/{name}"
        if key not in f:
            problems.append(f"The dataset '{key}' is missing.")
        elif f[key].shape != (n, widths[name]):
            problems.append(f"The dataset '{key}' is {f[key].shape}; expected ({n}, {widths[name]}).")
    if len(values) < len(OBS_COLUMNS):
        return
    index = values["index"]
    if not np.array_equal(index, np.arange(int(a["start"]), int(a["stop"]))):
        problems.append("obs/index is not the consecutive global indices start..stop.")
    threshold = float(config.get("min_confidence", 0.0))
    draw, offset = np.divmod(values["seed"] - int(config.get("seed", 0)) - index, DRAW_STRIDE)
    if (
        "seed" in config
        and threshold == 0
        and not np.array_equal(values["seed"], int(config["seed"]) + index)
    ):
        problems.append("obs/seed is not config.seed + obs/index for every sample.")
    elif "seed" in config and ((offset != 0) | (draw < 0) | (draw >= MAX_DRAWS)).any():
        problems.append(
            f"obs/seed is not config.seed + obs/index + j * 2^32 (0 <= j < {MAX_DRAWS}) for every sample."
        )
    conf = values["confidence"]
    scored = threshold > 0 or bool(config.get("score_confidence", False))
    if not scored and len(conf) and not np.isnan(conf).all():
        problems.append(
            "obs/confidence holds values although the set was not scored (min_confidence 0, "
            "score_confidence false): expected NaN."
        )
    elif scored and len(conf) and not ((conf >= threshold) & (conf <= 1)).all():
        problems.append(f"obs/confidence holds values outside [{threshold}, 1] (synthesis.min_confidence).")
    names = a["category_names"]
    cat = values["category"]
    if len(cat) and not np.isin(cat, a["categories"]).all():
        problems.append(f"obs/category holds categories outside {a['categories']}.")
    elif len(cat) and list(values["label"]) != [names[c] for c in cat]:
        problems.append("obs/label does not match category_names[obs/category] everywhere.")
    if (
        "latent/categorical" in f
        and f["latent/categorical"].shape == (n, widths["categorical"])
        and widths["categorical"]
        and not np.array_equal(f["latent/categorical"][:, 0], cat)
    ):
        problems.append("latent/categorical[:, 0] differs from obs/category.")
