"""Torch ``Dataset``s over the pipeline's HDF5 files, and the synthetic set's label table.

:class:`SyntheticCells` reads a synthetic set (a shard file or the master file that joins the
shards), :class:`CropDataset` the real crops of a crop store (``docs/hdf5.md``). Both open the
HDF5 file lazily, in the process that reads it, so they are safe in a ``DataLoader`` with
worker processes (an HDF5 handle must not cross a fork).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from infogan_cells.data.h5ad import read_dataframe
from infogan_cells.data.store import FORMAT as CROPS_FORMAT
from infogan_cells.data.store import open_hdf5
from infogan_cells.errors import InputError
from infogan_cells.synthesis.writers import FORMAT, OBS_COLUMNS, load_hdf5_plugins

__all__ = ["CropDataset", "SyntheticCells", "read_obs"]


def _open(path: Path, fmt: str = FORMAT) -> h5py.File:
    load_hdf5_plugins()  # Blosc-compressed files need the filter registered before reading
    what = "synthetic data set" if fmt == FORMAT else "crop store"
    f = open_hdf5(path, what)
    if f.attrs.get("format") != fmt:
        f.close()
        hint = (
            "check it with 'infogan-cells validate'"
            if fmt == FORMAT
            else "make one with 'infogan-cells crop'"
        )
        raise InputError(f"{path}: not a {what} (no format='{fmt}'; {hint})")
    return f


class _ImagesOnDemand(torch.utils.data.Dataset):
    """The ``images`` dataset of ``self.path``, opened on first use in each process: a forked
    DataLoader worker drops its parent's handle (never uses or closes it) and opens its own."""

    _format = FORMAT
    _file: h5py.File | None = None
    _images: h5py.Dataset | None = None
    _pid: int | None = None

    def _dataset(self) -> h5py.Dataset:
        if self._images is None or self._pid != os.getpid():
            self._file = _open(self.path, self._format)
            self._images = self._file["images"]
            self._pid = os.getpid()
        return self._images

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._images = self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _images=None, _pid=None)
        return state


class SyntheticCells(_ImagesOnDemand):
    """Synthetic cells from ``synth.h5`` (a shard or the master file).

    ``dataset[i]`` is ``(image, label)``: image (C, H, W) float32 in [0, 1], label the sample's
    category (int; its name is ``category_names[label]``). ``transform`` is applied to the
    image tensor. The labels are read once, up front; images are read on access.
    """

    def __init__(self, path: str | Path, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.path = Path(path)
        self.transform = transform
        with _open(self.path) as f:
            self.labels = f["obs"]["category"][:].astype(np.int64)
            self.category_names: list[str] = json.loads(f.attrs["category_names"])
            self.channel_names = [str(c) for c in f["images"].attrs["channel_names"]]
            self.image_shape = tuple(f["images"].shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self))[i]  # negative indices; IndexError past the end
        image = torch.from_numpy(self._dataset()[i]).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class CropDataset(_ImagesOnDemand):
    """Real crops from a crop store ``crops.h5``, with the conventions of :class:`SyntheticCells`.

    ``dataset[i]`` is ``(image, target)``: image (C, H, W) float32 in [0, 1] (``transform`` is
    applied to it), target an int (``target_transform`` is applied to it). ``target`` says
    what the int is:

    - ``"label"`` (default), or another ``obs`` column: its values, where they are integers;
      otherwise the position of the crop's value in ``classes`` (the sorted distinct values),
      -1 where it is unknown (``""``);
    - a pandas Series indexed by crop index (the row in the store), such as the analysis's
      categories, ``pd.read_csv("assignments.csv", index_col="crop_index")["category"]``:
      its values, the same way, and the dataset holds only the crops the Series names, in its
      order.

    By default only the crops that passed QC are items (those training sees; a store has
    failed crops only when cropped with ``crop.keep_failed``); ``crop_index`` maps an item to
    its row in the store and ``obs`` holds the items' metadata. Stores written since crops were
    chunked one per HDF5 chunk read one crop per item in any order (``docs/benchmarks.md``).
    """

    _format = CROPS_FORMAT

    def __init__(
        self,
        path: str | Path,
        target: str | pd.Series = "label",
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        target_transform: Callable[[int], object] | None = None,
        passed_qc_only: bool = True,
    ):
        self.path = Path(path)
        self.transform, self.target_transform = transform, target_transform
        with _open(self.path, CROPS_FORMAT) as f:
            obs = read_dataframe(f["obs"])
            self.channel_names = [str(c) for c in f["images"].attrs.get("channel_names", [])]
            self.image_shape = tuple(f["images"].shape[1:])
        keep = (
            obs["qc_pass"].to_numpy(dtype=bool)
            if passed_qc_only and "qc_pass" in obs
            else np.ones(len(obs), bool)
        )
        self.classes: list[str] = []
        if isinstance(target, pd.Series):
            index = target.index.to_numpy()
            if not pd.api.types.is_integer_dtype(index.dtype) or ((index < 0) | (index >= len(obs))).any():
                raise InputError(
                    f"{self.path}: the target's index must be crop indices 0..{len(obs) - 1} "
                    "(rows of the store)"
                )
            self.crop_index = index.astype(np.int64)
            values = target.to_numpy()
        elif target in obs.columns:
            self.crop_index = np.flatnonzero(keep)
            values = obs[target].to_numpy()[self.crop_index]
        else:
            raise InputError(
                f"{self.path}: no obs column {target!r} to use as the target "
                f"(columns: {', '.join(obs.columns)})"
            )
        if pd.api.types.is_integer_dtype(values.dtype):
            self.targets = values.astype(np.int64)
        else:  # names: their position in the sorted names, -1 for ""
            values = values.astype(str)
            self.classes = sorted(set(values) - {""})
            lookup = {name: k for k, name in enumerate(self.classes)}
            self.targets = np.array([lookup.get(v, -1) for v in values], dtype=np.int64)
        self.obs = obs.iloc[self.crop_index].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.crop_index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, object]:
        i = range(len(self))[i]
        image = (
            torch.from_numpy(self._dataset()[int(self.crop_index[i])]).permute(2, 0, 1).float().div_(255.0)
        )
        if self.transform is not None:
            image = self.transform(image)
        target = int(self.targets[i])
        return image, (self.target_transform(target) if self.target_transform is not None else target)


def read_obs(path: str | Path) -> pd.DataFrame:
    """The data set's label table: one row per image, columns ``index, seed, category, label, confidence``."""
    with _open(Path(path)) as f:
        obs = read_dataframe(f["obs"])  # the crop store's reader: both tables are AnnData dataframes
        if "index" not in obs:  # the row names, stored as the encoding's index
            obs.insert(0, "index", f["obs"]["index"][:])
        return obs[list(OBS_COLUMNS)]
