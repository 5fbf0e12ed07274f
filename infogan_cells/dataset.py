"""Readers of a synthetic data set: a torch ``Dataset`` over its images, and its label table.

Both work on a shard file and on the master file that joins the shards (``docs/hdf5.md``).
:class:`SyntheticCells` opens the HDF5 file lazily, in the process that reads it, so it is safe
in a ``DataLoader`` with worker processes (an HDF5 handle must not cross a fork).
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

from infogan_cells.errors import InputError
from infogan_cells.writers import FORMAT, OBS_COLUMNS, load_hdf5_plugins

__all__ = ["SyntheticCells", "read_obs"]


def _open(path: Path) -> h5py.File:
    load_hdf5_plugins()  # Blosc-compressed files need the filter registered before reading
    if not path.exists():
        raise InputError(f"{path}: synthetic data set not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not an HDF5 file ({err})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise InputError(f"{path}: not a synthetic data set (no format='{FORMAT}'; "
                         "check it with 'infogan-cells validate')")
    return f


class SyntheticCells(torch.utils.data.Dataset):
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
        self._file: h5py.File | None = None
        self._images: h5py.Dataset | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _dataset(self) -> h5py.Dataset:
        if self._images is None or self._pid != os.getpid():
            # in a forked worker the parent's handle is dropped, never used or closed here
            self._file = _open(self.path)
            self._images = self._file["images"]
            self._pid = os.getpid()
        return self._images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self))[i]  # negative indices; IndexError past the end
        image = torch.from_numpy(self._dataset()[i]).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._images = self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _images=None, _pid=None)
        return state


def read_obs(path: str | Path) -> pd.DataFrame:
    """The data set's label table: one row per image, columns ``index, seed, category, label, confidence``."""
    with _open(Path(path)) as f:
        obs = f["obs"]
        return pd.DataFrame({name: (obs[name].asstr()[:] if name == "label" else obs[name][:])
                             for name in OBS_COLUMNS})
