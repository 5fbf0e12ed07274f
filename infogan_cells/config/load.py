"""Building configs from YAML mappings (every value checked, unknown keys refused), and back."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from infogan_cells.config.stages import Config
from infogan_cells.errors import ConfigError

# --------------------------------------------------------------------------------------
# Building and checking


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_value(key: str, value: Any, tp: Any, meta: Mapping) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    elif tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        value = list(value)
    elif tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        value = dict(value)
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(meta['choices'])}")
    for bound, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not ok(value, b):
            raise ConfigError(f"config key '{key}': {value!r} must be {word} {b}")
    return value


def from_mapping(cls: type, data: Mapping | None, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested mapping, rejecting unknown keys and bad values."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config key '{prefix}{unknown[0]}' does not exist "
            f"(known keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if _is_dataclass_type(tp):
            kwargs[name] = from_mapping(tp, value, key + ".")
        else:
            kwargs[name] = _check_value(key, value, tp, fields[name].metadata)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)  # cross-field rules, raising ConfigError
    return obj


def to_dict(obj: Any) -> dict:
    """The config as plain nested dicts and lists (for YAML, JSON and HDF5 attributes)."""
    return dataclasses.asdict(obj)


def _deep_update(base: dict, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def parse_set_option(item: str) -> dict:
    """Turn ``train.latent.z_dim=32`` into ``{"train": {"latent": {"z_dim": 32}}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: cannot parse the value: {err}") from None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_config_file(path: str | Path | None) -> dict:
    """Read a YAML config file into a mapping (empty for ``None``)."""
    if path is None:
        return {}
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return dict(data)


def load_config(path: str | Path | None = None, overrides: Sequence[Mapping] = ()) -> Config:
    """Load a config file, apply ``overrides`` (nested mappings) in order, and check everything.

    Keys left out take their defaults. Raises :class:`ConfigError` naming the first bad key.
    """
    data = read_config_file(path)
    for extra in overrides:
        data = _deep_update(data, extra)
    try:
        return from_mapping(Config, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def dump_config(config: Any) -> str:
    """The config as YAML text (the resolved config written beside every output)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
