"""The TIFF writers of synthetic cells: one OME-TIFF stack per category, or one file per cell."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infogan_cells._io import atomic_path
from infogan_cells.synthesis.writers import Batch, Writer, _AtomicFiles

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# TIFF


@dataclasses.dataclass(frozen=True)
class StackPlan:
    """The pages of one category's stack: global sample indices and seeds, in page order."""

    category: int
    label: str
    index: np.ndarray
    seed: np.ndarray


def stack_name(category: int, label: str) -> str:
    """``category_03_ring`` (or ``category_03`` when the label is the default name)."""
    base = f"category_{category:02d}"
    if not label or label == base:
        return base
    return f"{base}_{safe_name(label)}"


def safe_name(text: str) -> str:
    """A label made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "unnamed"


def _tiff_layout(image_shape: Sequence[int]) -> tuple[str, str, tuple[int, ...]]:
    """ImageJ axes, photometric and the stored page shape for (H, W, C) images."""
    h, w, c = image_shape
    if c == 1:
        return "YX", "minisblack", (h, w)
    if c == 3:
        return "YXS", "rgb", (h, w, 3)
    return "CYX", "minisblack", (c, h, w)


def _stored(image: np.ndarray, axes: str) -> np.ndarray:
    if axes == "YX":
        return image[..., 0]
    if axes == "CYX":
        return np.moveaxis(image, -1, -3)
    return image


class TiffStackWriter(Writer):
    """One multi-page OME-TIFF per category, pages in sample order, plus ``<stack>.csv`` beside it.

    Each stack is ``TCYX``: the cells along ``T`` (page ``t`` is sample ``index[t]``; the CSV
    says which), every channel a named plane (RGB too: three channels ``R``, ``G``, ``B``), so
    ``bioio`` (with ``bioio-ome-tiff``), Fiji (Bio-Formats), napari and tifffile read the
    cells, the channel names and, when ``pixel_size_um`` is known, the physical pixel size from
    the OME XML. The ImageJ-side copy of the same facts: resolution tags in centimetres and an
    ``IJMetadata`` tag with a label per plane (index, seed, label, channel) and the data set's
    description as JSON in ``Info``. A stack past :attr:`CLASSIC_LIMIT` bytes is a BigTIFF. The
    pixels are stored uncompressed and contiguous, so they are written in place as batches arrive.
    """

    CLASSIC_LIMIT = (1 << 32) - (1 << 26)

    def __init__(
        self,
        tiff_dir: str | Path,
        stacks: Sequence[StackPlan],
        *,
        image_shape: Sequence[int],
        channel_names: Sequence[str],
        info: Mapping[str, Any],
        suffix: str = "",
        overwrite: bool = False,
        pixel_size_um: float | None = None,
    ):
        self.tiff_dir = Path(tiff_dir)
        self._files = _AtomicFiles()
        self._axes = "CYX"
        h, w, c = image_shape
        page_shape = (c, h, w)
        self._page_bytes = int(np.prod(page_shape))
        self._stacks = {int(s.category): s for s in stacks if len(s.index)}
        self._handles: dict[int, Any] = {}
        self._offset: dict[int, int] = {}
        self._done = dict.fromkeys(self._stacks, 0)
        self.paths: list[Path] = []
        try:
            for c, plan in self._stacks.items():
                path = self.tiff_dir / f"{stack_name(c, plan.label)}{suffix}.tif"
                tmp = self._files.add(path, overwrite=overwrite)
                csv_tmp = self._files.add(path.with_suffix(".csv"), overwrite=overwrite)
                self._offset[c] = self._create(tmp, plan, page_shape, channel_names, info, pixel_size_um)
                self._handles[c] = open(tmp, "r+b")  # noqa: SIM115  (closed in commit/abort)
                _write_stack_csv(csv_tmp, plan)
                self.paths.append(path)
        except BaseException:
            self.abort()
            raise

    def _create(
        self,
        tmp: Path,
        plan: StackPlan,
        page_shape: tuple[int, ...],
        channel_names: Sequence[str],
        info: Mapping[str, Any],
        pixel_size_um: float | None,
    ) -> int:
        import tifffile

        n = len(plan.index)
        shape = (n, *page_shape)
        description = {
            **info,
            "category": int(plan.category),
            "label": plan.label,
            "pages": n,
            "first_index": int(plan.index[0]),
            "last_index": int(plan.index[-1]),
            "pixel_size_um": pixel_size_um,
        }
        names = [str(ch) for ch in channel_names]
        labels = [
            f"{plan.label} #{i} seed {s} {ch}"
            for i, s in zip(plan.index.tolist(), plan.seed.tolist(), strict=True)
            for ch in names
        ]
        metadata: dict[str, Any] = {
            "axes": "TCYX",
            "Name": stack_name(plan.category, plan.label),
            "Description": json.dumps(description),
            "Channel": {"Name": names},
        }
        resolution = {}
        if pixel_size_um is not None:
            metadata.update(
                PhysicalSizeX=pixel_size_um,
                PhysicalSizeXUnit="µm",
                PhysicalSizeY=pixel_size_um,
                PhysicalSizeYUnit="µm",
            )
            resolution = {
                "resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um),
                "resolutionunit": "CENTIMETER",
            }
        ij_tags = tifffile.imagej_metadata_tag({"Labels": labels, "Info": json.dumps(description)}, "<")
        big = n * self._page_bytes + 64 * n * page_shape[0] >= self.CLASSIC_LIMIT
        offset, _ = tifffile.imwrite(
            tmp,
            shape=shape,
            dtype=np.uint8,
            photometric="minisblack",
            ome=True,
            bigtiff=big,
            metadata=metadata,
            extratags=ij_tags,
            returnoffset=True,
            byteorder="<",
            **resolution,
        )
        return int(offset)

    def write(self, batch: Batch) -> None:
        for row, (c, k) in enumerate(zip(batch.category.tolist(), batch.index.tolist(), strict=True)):
            plan = self._stacks[c]
            page = self._done[c]
            if page >= len(plan.index) or plan.index[page] != k:
                raise ValueError(
                    f"{self.tiff_dir}: sample {k} (category {c}) is not the next page of its stack"
                )
            fh = self._handles[c]
            fh.seek(self._offset[c] + page * self._page_bytes)
            fh.write(np.ascontiguousarray(_stored(batch.images[row], self._axes)).tobytes())
            self._done[c] = page + 1

    def commit(self) -> None:
        missing = {
            c: len(p.index) - self._done[c] for c, p in self._stacks.items() if self._done[c] != len(p.index)
        }
        if missing:
            raise RuntimeError(f"{self.tiff_dir}: stacks incomplete (pages missing per category: {missing})")
        for fh in self._handles.values():
            fh.close()
        self._files.commit()
        log.info("wrote %d TIFF stacks to %s", len(self.paths), self.tiff_dir)

    def abort(self) -> None:
        for fh in self._handles.values():
            with contextlib.suppress(Exception):
                fh.close()
        self._files.abort()


def _write_stack_csv(path: Path, plan: StackPlan) -> None:
    lines = ["page,index,seed,category,label"]
    label = '"' + plan.label.replace('"', '""') + '"'
    lines += [
        f"{p},{i},{s},{plan.category},{label}"
        for p, (i, s) in enumerate(zip(plan.index.tolist(), plan.seed.tolist(), strict=True))
    ]
    path.write_text("\n".join(lines) + "\n")


def image_tiff_path(tiff_dir: str | Path, index: int, label: str) -> Path:
    """Where :class:`TiffImageWriter` puts sample ``index``: ``images/<label>/<index // 1000>/<index>.tif``."""
    return Path(tiff_dir) / "images" / safe_name(label) / f"{index // 1000:06d}" / f"{index:09d}.tif"


class TiffImageWriter(Writer):
    """One ImageJ TIFF per image (its index, seed, category and label in ``Info``; the pixel size
    as ImageJ's calibration when known), each atomic.

    Files are final as soon as they are written: a killed job leaves whole files only, and the
    rerun rewrites the same bytes. ``abort`` leaves the finished ones (they are correct).
    """

    def __init__(
        self,
        tiff_dir: str | Path,
        *,
        image_shape: Sequence[int],
        info: Mapping[str, Any],
        overwrite: bool = False,
        pixel_size_um: float | None = None,
    ):
        self.tiff_dir = Path(tiff_dir)
        self._axes, self._photometric, _ = _tiff_layout(image_shape)
        self._info = {**info, "pixel_size_um": pixel_size_um}
        # ImageJ's calibration: pixels per micrometre and the unit in its description
        self._scale = {} if pixel_size_um is None else {"resolution": (1 / pixel_size_um, 1 / pixel_size_um)}
        self._unit = {} if pixel_size_um is None else {"unit": "micron"}
        self._overwrite = overwrite
        self.n_written = 0

    def write(self, batch: Batch) -> None:
        import tifffile

        for row in range(len(batch)):
            k, label = int(batch.index[row]), str(batch.label[row])
            info = {
                **self._info,
                "index": k,
                "seed": int(batch.seed[row]),
                "category": int(batch.category[row]),
                "label": label,
            }
            with atomic_path(image_tiff_path(self.tiff_dir, k, label), overwrite=self._overwrite) as tmp:
                tifffile.imwrite(
                    tmp,
                    _stored(batch.images[row], self._axes),
                    photometric=self._photometric,
                    imagej=True,
                    metadata={"axes": self._axes, "Info": json.dumps(info), **self._unit},
                    **self._scale,
                )
            self.n_written += 1

    def commit(self) -> None:
        log.info("wrote %d single-image TIFFs under %s", self.n_written, self.tiff_dir / "images")

    def abort(self) -> None:
        pass
