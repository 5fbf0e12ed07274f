"""AnnData's on-disk encoding: the crop store's obs/, and .h5ad files, read back with anndata."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from infogan_cells.data.h5ad import read_dataframe, write_dataframe, write_h5ad
from infogan_cells.data.store import REQUIRED_OBS, read_crop_store, write_crop_store

anndata = pytest.importorskip("anndata", reason="anndata is the 'anndata' extra (in 'dev')")
read_elem = anndata.io.read_elem


def _frame(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": [f"cell é{i}" for i in range(n)],
            "count": np.arange(n, dtype=np.int64) * 3,
            "value": np.linspace(0, 1, n),
            "ok": np.arange(n) % 2 == 0,
            "kind": pd.Categorical(["b", "a", "b", "c", "a"][:n], categories=["a", "b", "c"]),
        },
        index=[f"r{i}" for i in range(n)],
    )


def test_a_dataframe_reads_back_in_anndata_and_here(tmp_path):
    frame = _frame()
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_dataframe(f, "obs", frame)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        got = read_elem(f["obs"])
        ours = read_dataframe(f["obs"])
    assert list(got.columns) == list(frame.columns) and list(got.index) == list(frame.index)
    np.testing.assert_array_equal(got["name"].astype(str), frame["name"])
    np.testing.assert_array_equal(got["count"], frame["count"])
    np.testing.assert_array_equal(got["value"], frame["value"])
    assert got["ok"].dtype == bool and (got["ok"] == frame["ok"]).all()
    assert isinstance(got["kind"].dtype, pd.CategoricalDtype)
    assert list(got["kind"].cat.categories) == ["a", "b", "c"] and list(got["kind"]) == list(frame["kind"])
    pd.testing.assert_frame_equal(ours, frame.reset_index(drop=True), check_dtype=False)


def _store_obs(n: int) -> pd.DataFrame:
    obs = pd.DataFrame(
        {
            "source_image": [f"img{i % 2}.png" for i in range(n)],
            "source_index": np.arange(n),
            "min_row": np.zeros(n, int),
            "min_col": np.zeros(n, int),
            "max_row": np.full(n, 8),
            "max_col": np.full(n, 8),
            "label": ["ring", "", "ring", "rbc", ""][:n],
            "qc_pass": [True, True, False, True, True][:n],
            "qc_reason": ["", "", "blur", "", ""][:n],
        }
    )
    obs["focus"] = np.linspace(0.5, 2, n)
    return obs


def test_the_crop_store_obs_group_is_an_anndata_dataframe(tmp_path):
    obs = _store_obs(5)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    write_crop_store(tmp_path / "crops.h5", images, obs, ["r", "g", "b"])
    with h5py.File(tmp_path / "crops.h5", "r") as f:
        got = read_elem(f["obs"])
        assert f["images"].chunks == (1, 8, 8, 3)  # one crop per chunk
    assert list(got.columns) == [*REQUIRED_OBS, "focus"] and list(got.index) == [str(i) for i in range(5)]
    np.testing.assert_array_equal(got["label"].astype(str), obs["label"])
    np.testing.assert_array_equal(got["qc_pass"], obs["qc_pass"])
    cs = read_crop_store(tmp_path / "crops.h5")
    pd.testing.assert_frame_equal(cs.obs, obs, check_dtype=False)
    np.testing.assert_array_equal(cs.images, images)


def test_a_crop_store_written_before_the_encoding_still_reads(tmp_path):
    """The layout of format_version 1 before the AnnData attributes: columns attribute, no _index."""
    obs = _store_obs(4)
    images = np.zeros((4, 8, 8, 1), np.uint8)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "infogan-cells/crops", "format_version": 1, "summary": "{}", "config": ""})
        f.create_dataset("images", data=images, chunks=(4, 8, 8, 1), compression="gzip").attrs[
            "channel_names"
        ] = ["x"]
        grp = f.create_group("obs")
        grp.attrs["columns"] = list(obs.columns)
        for col in obs.columns:
            values = obs[col].to_numpy()
            if values.dtype == object:
                grp.create_dataset(
                    col, data=values.astype(str).astype(object), dtype=h5py.string_dtype("utf-8")
                )
            else:
                grp.create_dataset(col, data=values)
    pd.testing.assert_frame_equal(read_crop_store(path).obs, obs, check_dtype=False)


def test_h5ad_opens_in_anndata(tmp_path):
    obs = _frame(5)
    var = pd.DataFrame(index=["area", "eccentricity"])
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    write_h5ad(
        tmp_path / "cells.h5ad",
        X,
        obs,
        var,
        obsm={"q_continuous": np.ones((5, 3), np.float32)},
        uns={"note": "hello"},
    )
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert adata.shape == (5, 2) and list(adata.var_names) == ["area", "eccentricity"]
    np.testing.assert_array_equal(adata.X, X)
    assert list(adata.obs_names) == list(obs.index) and list(adata.obs["kind"]) == list(obs["kind"])
    assert adata.obsm["q_continuous"].shape == (5, 3) and adata.uns["note"] == "hello"


def test_h5ad_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"X is \(4, 2\) for 5 obs"):
        write_h5ad(tmp_path / "x.h5ad", np.zeros((4, 2)), _frame(5), pd.DataFrame(index=["a", "b"]))
    with pytest.raises(ValueError, match=r"obsm\['f'\] has 3 rows"):
        write_h5ad(
            tmp_path / "x.h5ad",
            np.zeros((5, 2)),
            _frame(5),
            pd.DataFrame(index=["a", "b"]),
            obsm={"f": np.zeros((3, 1))},
        )
    assert not (tmp_path / "x.h5ad").exists()
