"""A config field: its default and the metadata that checks it, documents it and writes the schema."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def param(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    choices: Sequence | None = None,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a description and the checks its value must pass."""
    meta = {"help": help, "choices": choices, "ge": ge, "le": le, "gt": gt, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
