"""AnnData's on-disk encoding, written with h5py, so that ``anndata`` reads our tables.

Three writers share it: the crop store's ``obs/`` group, the synthetic set's ``obs/`` group
and the analysis's ``cells.h5ad``. Writing needs no ``anndata``; reading with it is
``anndata.io.read_elem(f["obs"])`` or ``anndata.read_h5ad(path)``.

A dataframe is a group with attributes ``encoding-type="dataframe"``,
``encoding-version="0.2.0"``, ``_index`` (the dataset holding the row names) and
``column-order``; each column is a dataset with ``encoding-type`` ``array`` (numbers,
booleans) or ``string-array`` (UTF-8 strings), or a ``categorical`` group of ``codes`` and
``categories``. The layout is AnnData's "dataframe" element, version 0.2.0
(https://anndata.readthedocs.io/en/stable/fileformat-prose.html).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from infogan_cells._io import atomic_path

INDEX_KEY = "_index"


def write_dataframe(
    parent: h5py.Group,
    name: str,
    frame: pd.DataFrame | None = None,
    *,
    columns: Sequence[str] | None = None,
    index_column: str | None = None,
) -> h5py.Group:
    """Write ``frame`` as ``parent[name]`` in AnnData's dataframe encoding and return the group.

    Strings are written as UTF-8, booleans and numbers as they are (integers as int64, floats
    as float64), pandas categoricals as codes and categories. The row names are
    ``frame.index`` as strings, in ``_index``.

    Without ``frame``, the group ``parent[name]`` must exist with one dataset per name in
    ``columns`` (a writer that fills its columns batch by batch); only the encoding is added.
    ``index_column`` then names the column that serves as the row names; without it the row
    names are ``"0" .. "N-1"``.
    """
    if frame is not None:
        group = parent.create_group(name)
        for col in frame.columns:
            _write_column(group, str(col), frame[col])
        columns = [str(c) for c in frame.columns]
        group.create_dataset(INDEX_KEY, data=_strings(frame.index), dtype=h5py.string_dtype("utf-8"))
        index_key = INDEX_KEY
    else:
        group = parent[name]
        columns = [str(c) for c in columns or ()]
        for col in columns:
            _mark(group[col])
        if index_column is not None:
            index_key = index_column
            columns = [c for c in columns if c != index_column]
        else:
            n = len(group[columns[0]]) if columns else 0
            group.create_dataset(
                INDEX_KEY, data=np.arange(n).astype(str).astype(object), dtype=h5py.string_dtype("utf-8")
            )
            index_key = INDEX_KEY
    _mark(group[index_key])
    group.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": index_key})
    group.attrs.create("column-order", np.array(columns, dtype=object), dtype=h5py.string_dtype("utf-8"))
    return group


def read_dataframe(group: h5py.Group) -> pd.DataFrame:
    """The columns of a dataframe group as written by :func:`write_dataframe` (or before
    the encoding existed: one dataset per column), index ``0 .. N-1``; strings as objects."""
    cols = [str(c) for c in group.attrs.get("columns", group.attrs.get("column-order", []))]
    if not cols:
        cols = [k for k in group.keys() if k != group.attrs.get("_index", INDEX_KEY)]
    data = {}
    for col in cols:
        elem = group[col]
        if isinstance(elem, h5py.Group):  # categorical
            categories = _read_array(elem["categories"])
            data[col] = pd.Categorical.from_codes(
                elem["codes"][...], categories=categories, ordered=bool(elem.attrs.get("ordered", False))
            )
        else:
            data[col] = _read_array(elem)
    return pd.DataFrame(data)


def write_h5ad(
    path: str | Path,
    X: np.ndarray,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    *,
    obsm: Mapping[str, np.ndarray] | None = None,
    uns: Mapping[str, str] | None = None,
) -> None:
    """Write an ``.h5ad`` file (AnnData 0.1.0 layout) atomically: ``X`` (n_obs, n_var) dense,
    ``obs`` and ``var`` dataframes, dense ``obsm`` arrays of n_obs rows, ``uns`` strings."""
    X = np.asarray(X)
    if X.shape != (len(obs), len(var)):
        raise ValueError(f"X is {X.shape} for {len(obs)} obs and {len(var)} var rows")
    for key, value in (obsm or {}).items():
        if len(value) != len(obs):
            raise ValueError(f"obsm[{key!r}] has {len(value)} rows for {len(obs)} obs rows")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        _mark(f.create_dataset("X", data=X))
        write_dataframe(f, "obs", obs)
        write_dataframe(f, "var", var)
        for name, items in (
            ("obsm", obsm),
            ("varm", None),
            ("obsp", None),
            ("varp", None),
            ("layers", None),
            ("uns", uns),
        ):
            group = f.create_group(name)
            group.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
            for key, value in (items or {}).items():
                if isinstance(value, str):
                    ds = group.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))
                    ds.attrs.update({"encoding-type": "string", "encoding-version": "0.2.0"})
                else:
                    _mark(group.create_dataset(key, data=np.asarray(value)))


# --------------------------------------------------------------------------------------


def _write_column(group: h5py.Group, name: str, values: pd.Series) -> None:
    if isinstance(values.dtype, pd.CategoricalDtype):
        cat = group.create_group(name)
        cat.attrs.update(
            {"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": bool(values.cat.ordered)}
        )
        _mark(cat.create_dataset("codes", data=values.cat.codes.to_numpy()))
        categories = values.cat.categories
        if pd.api.types.is_numeric_dtype(categories.dtype):
            _mark(cat.create_dataset("categories", data=categories.to_numpy()))
        else:
            _mark(
                cat.create_dataset("categories", data=_strings(categories), dtype=h5py.string_dtype("utf-8"))
            )
    elif values.dtype == bool:
        _mark(group.create_dataset(name, data=values.to_numpy(dtype=bool)))
    elif pd.api.types.is_integer_dtype(values.dtype):
        _mark(group.create_dataset(name, data=values.to_numpy(dtype=np.int64)))
    elif pd.api.types.is_float_dtype(values.dtype):
        _mark(group.create_dataset(name, data=values.to_numpy(dtype=np.float64)))
    else:
        _mark(group.create_dataset(name, data=_strings(values), dtype=h5py.string_dtype("utf-8")))


def _strings(values: Sequence) -> np.ndarray:
    """UTF-8 strings, ``""`` for missing values."""
    return np.array(
        [("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)) for v in values],
        dtype=object,
    )


def _mark(ds: h5py.Dataset) -> None:
    """AnnData's element attributes for a plain array or an array of strings."""
    kind = "string-array" if h5py.check_string_dtype(ds.dtype) is not None else "array"
    ds.attrs.update({"encoding-type": kind, "encoding-version": "0.2.0"})


def _read_array(ds: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return ds.asstr()[...].astype(object) if len(ds) else np.array([], dtype=object)
    return ds[...]
