"""What a synthetic set holds before any image is made: the category of every sample (the plan),
shards, and the category map of a run."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from infogan_cells.config import LatentSpec, SynthConfig
from infogan_cells.errors import InputError
from infogan_cells.model.checkpoint import (
    network_path,
)
from infogan_cells.synthesis.tiff import StackPlan

log = logging.getLogger(__name__)


CATEGORY_MAP_NAME = "category_map.csv"
#: The golden ratio's fractional part: ``frac(k * WEYL)`` is a low-discrepancy sequence, so
#: every prefix of the data set has the requested category proportions to within a few samples
#: (at most 4 per category in any prefix of the first 200,000, measured), without any state.
WEYL = (math.sqrt(5.0) - 1.0) / 2.0


# --------------------------------------------------------------------------------------
# What gets made


def read_category_map(path: str | Path, n_categories: int) -> pd.DataFrame:
    """Read ``category_map.csv`` (columns ``category,label,purity``) into a table indexed by category."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"label": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the category map ({err})") from None
    missing = {"category", "label"} - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: the category map lacks column(s) {', '.join(sorted(missing))} "
            "(expected category,label,purity)"
        )
    if not pd.api.types.is_integer_dtype(table["category"]):
        raise InputError(f"{path}: column 'category' must hold integers")
    bad = table.loc[(table["category"] < 0) | (table["category"] >= n_categories), "category"]
    if len(bad):
        raise InputError(
            f"{path}: category {int(bad.iloc[0])} is out of range (the generator has "
            f"{n_categories} categories)"
        )
    if table["category"].duplicated().any():
        raise InputError(
            f"{path}: category {int(table['category'][table['category'].duplicated()].iloc[0])} appears twice"
        )
    table["purity"] = pd.to_numeric(table["purity"], errors="coerce") if "purity" in table.columns else np.nan
    return table.set_index("category").sort_index()[["label", "purity"]]


def find_category_map(run_dir: str | Path) -> Path | None:
    """``category_map.csv`` beside the network file, if there is one."""
    folder = network_path(run_dir).parent
    path = folder / CATEGORY_MAP_NAME
    return path if path.exists() else None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which category and which grid point each global sample index gets.

    ``categories`` are the categories made (all, or those whose label is in ``config.labels``);
    ``proportions`` their mix (None with ``per_category``: sample ``k`` is category
    ``categories[k % len(categories)]``); ``names`` the label of every category of the code.
    """

    n_total: int
    categories: np.ndarray
    proportions: np.ndarray | None
    names: list[str]
    grid_steps: int | None
    continuous_range: float

    def category(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if self.proportions is None:
            return self.categories[index % len(self.categories)]
        u = np.modf(index.astype(np.float64) * WEYL)[0]
        edges = np.cumsum(self.proportions)
        pick = np.minimum(np.searchsorted(edges, u, side="right"), len(self.categories) - 1)
        return self.categories[pick]

    def grid(self, index: np.ndarray, n_continuous: int) -> np.ndarray | None:
        """Continuous codes on the grid (B, n_continuous), or None when they are drawn."""
        if self.grid_steps is None or n_continuous == 0:
            return None
        index = np.asarray(index, dtype=np.int64)
        point = index // len(self.categories) if self.proportions is None else index
        values = np.linspace(-self.continuous_range, self.continuous_range, self.grid_steps)
        digits = [(point // self.grid_steps**j) % self.grid_steps for j in range(n_continuous)]
        return np.stack([values[d] for d in digits], axis=1).astype(np.float32)


def make_plan(
    spec: LatentSpec,
    meta: dict,
    config: SynthConfig,
    *,
    per_category: bool,
    category_map: pd.DataFrame | None,
    source: str = "category map",
) -> Plan:
    """Resolve the categories, their mix and their names; :class:`InputError` for an unknown label."""
    if not spec.categorical:
        raise InputError("the generator has no categorical code: there are no categories to label")
    k = spec.categorical[0]
    names = [f"category_{c:02d}" for c in range(k)]
    if category_map is not None:
        for c, label in category_map["label"].items():
            if label:
                names[int(c)] = str(label)
    categories = np.arange(k)
    if config.labels:
        if category_map is None:
            raise InputError(
                f"synthesis.labels {config.labels!r}: label names need a category map "
                f"({CATEGORY_MAP_NAME} from the analysis; pass --category-map)"
            )
        known = sorted(set(category_map["label"]))
        unknown = [name for name in config.labels if name not in known]
        if unknown:
            raise InputError(
                f"synthesis.labels: unknown label name {unknown[0]!r} in {source} (known: {', '.join(known)})"
            )
        categories = np.array(
            sorted(int(c) for c, label in category_map["label"].items() if label in config.labels)
        )
    proportions = None
    if not per_category:
        if config.proportions == "prior":
            prior = meta.get("category_prior")
            if prior is None:
                raise InputError(
                    "synthesis.proportions='prior': the network file has no learned "
                    "category_prior (train with train.prior=learned, or use uniform)"
                )
            prior = np.asarray(prior[0] if np.ndim(prior) == 2 else prior, dtype=np.float64)
            if prior.shape != (k,) or not np.all(prior >= 0) or prior[categories].sum() <= 0:
                raise InputError(
                    f"the network file's category_prior {prior.tolist()} does not fit {k} categories"
                )
            p = prior[categories]
        else:
            p = np.ones(len(categories))
        proportions = p / p.sum()
    n_total = config.n * len(categories) if per_category else config.n
    grid = config.grid_steps if config.continuous == "grid" else None
    return Plan(n_total, categories, proportions, names, grid, spec.continuous_range)


def shard_range(n_total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """The global indices ``[start, stop)`` of shard ``(i, n)``: the i-th of n near-equal parts."""
    i, n = shard
    return (i * n_total) // n, ((i + 1) * n_total) // n


def _check_shard(shard: Sequence[int]) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard {shard!r}: expected (i, n), e.g. (0, 4)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard {i}/{n}: out of range (need 0 <= i < n and n >= 1)")
    return i, n


def stack_plans(
    index: np.ndarray, seed: np.ndarray, category: np.ndarray, names: Sequence[str]
) -> list[StackPlan]:
    """One :class:`StackPlan` per category present, pages in index order."""
    return [
        StackPlan(int(c), names[int(c)], index[category == c], seed[category == c])
        for c in np.unique(category)
    ]
