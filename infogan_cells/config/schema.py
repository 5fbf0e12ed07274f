"""The JSON schema of the config, written from the dataclasses (``infogan-cells schema``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from infogan_cells.config.load import _is_dataclass_type
from infogan_cells.config.stages import Config

# --------------------------------------------------------------------------------------
# JSON schema (draft 2020-12) generated from the dataclasses


def _schema_for(tp: Any, meta: Mapping, default: Any) -> dict:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    nullable = False
    if origin in (typing.Union, types.UnionType):
        nullable = type(None) in args
        (tp,) = [a for a in args if a is not type(None)]
    if _is_dataclass_type(tp):
        return schema_of(tp, meta.get("help"))
    json_type = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }[tp]
    out: dict = {"type": [json_type, "null"] if nullable else json_type, "description": meta["help"]}
    if meta.get("choices") is not None:
        out["enum"] = list(meta["choices"])
    if meta.get("ge") is not None:
        out["minimum"] = meta["ge"]
    if meta.get("gt") is not None:
        out["exclusiveMinimum"] = meta["gt"]
    if meta.get("le") is not None:
        out["maximum"] = meta["le"]
    if meta.get("lt") is not None:
        out["exclusiveMaximum"] = meta["lt"]
    if default is not dataclasses.MISSING:
        out["default"] = default
    return out


def schema_of(cls: type = Config, description: str | None = None) -> dict:
    """The JSON schema (draft 2020-12) of a config dataclass, with a description per key."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING and not _is_dataclass_type(hints[f.name]):
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        props[f.name] = _schema_for(hints[f.name], f.metadata, default)
    out = {
        "type": "object",
        "description": description or (cls.__doc__ or "").strip().splitlines()[0],
        "properties": props,
        "additionalProperties": False,
    }
    if cls is Config:
        out = {"$schema": "https://json-schema.org/draft/2020-12/schema", **out}
    return out
