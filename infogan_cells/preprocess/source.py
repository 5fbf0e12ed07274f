"""The crop stage's work on one source image: read it, normalise, cut, check (run in a process pool)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import typing

import numpy as np
from PIL import Image

from infogan_cells.config import CropConfig
from infogan_cells.data.cells import BOX_COLUMNS, ImageSource, segment_boxes
from infogan_cells.data.images import pil_to_array
from infogan_cells.errors import InputError
from infogan_cells.preprocess import qc
from infogan_cells.preprocess.normalise import (
    GRID,
    background_level,
    border_median,
    channel_limits,
    histogram_levels,
    lab_stats,
    outside_boxes_median,
    reinhard,
    rescale_to_uint8,
    subsample,
)
from infogan_cells.preprocess.windows import (
    align_cells,
    box_problems,
    box_regions,
    crop_cells,
    crop_planes,
    crop_windows,
    inside_fraction,
    mask_background,
)
from infogan_cells.progress import track

log = logging.getLogger(__name__)

#: Side of the sample of each crop on which cells are counted.
QC_SIZE = 32

# --------------------------------------------------------------------------------------
# One source image (runs in a worker process when crop.workers > 1)


class Boxes(typing.NamedTuple):
    """The boxes of one source: ``index`` (K,) int64 (their ``source_index``), ``coords`` (K, 4)
    float64 (NaN: the whole image), ``labels`` (K,) str."""

    index: np.ndarray
    coords: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class SourceResult:
    crops: np.ndarray
    obs: dict[str, np.ndarray]  # the OBS_COLUMNS of its crops
    n_boxes: int
    skipped: collections.Counter
    n_channels: int | None = None
    image_problem: str | None = None
    messages: list[str] = dataclasses.field(default_factory=list)
    problem_text: str = ""  # why the image could not be read, when it could not

    @property
    def n_crops(self) -> int:
        return len(self.crops)


def crop_source(
    source: ImageSource, boxes: Boxes | None, segment: bool, cfg: CropConfig, reference: np.ndarray | None
) -> SourceResult:
    size = cfg.size
    try:
        decoded = source.decode()
    except FileNotFoundError:
        return _unreadable(source, boxes, "missing_image", "image not found", size)
    except Image.DecompressionBombError as err:  # a header claiming billions of pixels
        return _unreadable(source, boxes, "image_too_large", f"image too large to decode ({err})", size)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, InputError) as err:
        return _unreadable(source, boxes, "unreadable_image", f"unreadable image ({err})", size)
    finite = None  # per-pixel finiteness of a float array holding NaN or infinity
    if not isinstance(decoded, Image.Image) and decoded.dtype.kind == "f":
        finite = np.isfinite(decoded)
        if finite.all():
            finite = None
        elif not source.is_stack:
            return _unreadable(source, boxes, "non_finite", "image holds NaN or infinite values", size)

    if isinstance(decoded, Image.Image):
        shape, n_channels = (decoded.height, decoded.width), len(decoded.getbands())
    else:
        shape, n_channels = decoded.shape[-3:-1], decoded.shape[-1]
    if reference is not None and n_channels != 3:
        raise InputError(
            f"{source.path}: crop.stain=reinhard needs RGB images, this one has {n_channels} channel(s)"
        )
    if segment:
        found = segment_boxes(pil_to_array(decoded) if isinstance(decoded, Image.Image) else decoded)
        boxes = Boxes(
            found["source_index"].to_numpy(np.int64),
            found[list(BOX_COLUMNS)].to_numpy(np.float64),
            found["label"].to_numpy(dtype=object),
        )

    # Single-cell inputs have no box (NaN) or are stacks: the box is the whole image.
    coords = boxes.coords.copy()
    whole = source.is_stack or bool(len(coords) and np.isnan(coords).all())
    if whole:
        coords[:] = [0, 0, shape[0], shape[1]]
    if cfg.window_px is not None and cfg.window_px > min(shape):
        raise InputError(
            f"config key 'crop.window_px': {cfg.window_px} px is larger than the image "
            f"{source.path} ({shape[0]}x{shape[1]} px)"
        )
    problems = box_problems(coords, shape)
    good_cells = None
    if finite is not None:  # a float stack: skip its cells holding NaN or infinity
        good_cells = finite.reshape(len(decoded), -1).all(axis=1)
        bad = (problems == "") & ~good_cells[boxes.index]
        problems[bad] = "non_finite"
    skipped = collections.Counter(p for p in problems if p)
    messages = [
        f"{source.name}: {'cell' if source.is_stack else 'box'} "
        f"{', '.join(map(str, boxes.index[problems == reason]))} "
        f"{'holds NaN or infinite values, ' if reason == 'non_finite' else ''}skipped ({reason})"
        for reason in sorted(skipped)
    ]
    ok = problems == ""
    index, coords, labels = boxes.index[ok], coords[ok], boxes.labels[ok]
    if not len(index):  # no box left to crop (or none to begin with)
        return SourceResult(
            np.zeros((0, size, size, n_channels), np.uint8),
            {},
            len(problems),
            skipped,
            n_channels,
            messages=messages,
        )

    known = np.zeros((0, 4)) if whole else coords  # boxes that mark where the background is not
    if isinstance(decoded, Image.Image):
        # 8-bit: crop the raw image, then normalise the crops with the image's lookup table
        lut, raw_background = pil_levels(decoded, known, cfg)
        crops = crop_planes(
            [decoded],
            coords,
            size=size,
            margin=cfg.margin,
            fill=raw_background,
            whole=whole,
            lut=lut,
            window=cfg.window_px,
        )
        background = (
            raw_background.astype(np.uint8) if lut is None else lut[raw_background, np.arange(n_channels)]
        )
        sample = subsample(decoded) if reference is not None else None  # for the stain statistics
        if sample is not None and lut is not None:
            sample = lut[sample, np.arange(n_channels)]
    else:
        measured = decoded if good_cells is None else decoded[good_cells]  # limits from finite cells only
        lo, hi = channel_limits(measured, method=cfg.normalise, percentiles=cfg.percentiles)
        background = rescale_to_uint8(background_level(measured, known), lo, hi)
        image = rescale_to_uint8(decoded if finite is None else np.where(finite, decoded, 0), lo, hi)
        sample = subsample(image) if reference is not None else None
        if source.is_stack:
            crops = np.zeros((len(index), size, size, n_channels), np.uint8)
            for j, k in enumerate(index):
                crops[j] = crop_cells(
                    image[k],
                    coords[j : j + 1],
                    size=size,
                    background=background,
                    whole=True,
                    window=cfg.window_px,
                )[0]
        else:
            crops = crop_cells(
                image,
                coords,
                size=size,
                margin=cfg.margin,
                background=background,
                whole=whole,
                window=cfg.window_px,
            )
    if reference is not None and len(crops):
        stats = lab_stats(sample)
        crops = reinhard(crops, stats, reference)
        background = reinhard(np.asarray(background, np.uint8).reshape(1, 3), stats, reference)[0]

    # Cells are found on a 32-pixel sample of each crop: enough to tell one cell from two.
    step = max(1, size // QC_SIZE)
    windows = crop_windows(coords, margin=cfg.margin, whole=whole, window=cfg.window_px)
    regions = box_regions(coords, windows, size) // step
    distance = qc.foreground(crops[:, ::step, ::step], background)
    # Each crop's own threshold finds faint cells among bright ones (a G1 cell in a stack of
    # mitoses); the image's caps it where a dark neighbour would lift it over a pale cell.
    levels = np.minimum(qc.otsu_levels(distance), qc.otsu_levels(distance.reshape(1, -1, 1))[0])
    masks = qc.cell_masks(distance, levels)
    n_cells = qc.count_cells(masks, regions)
    blur = qc.laplacian_variance(crops)
    if cfg.align and len(crops):
        crops, _ = align_cells(crops, qc.main_component(masks, regions), background)
    if cfg.mask_background and len(crops):
        crops = mask_background(crops, background, cfg.mask_fill)

    inside = inside_fraction(coords, shape)
    none = np.zeros(len(crops), bool)
    failed = {
        "clipped": inside < qc.MIN_INSIDE,
        "cells": ((n_cells == 0) if whole else (n_cells != 1)) if cfg.qc_cell_count else none,
        "blur": blur < cfg.qc_blur_min if cfg.qc_blur_min > 0 else none,
    }
    obs = {
        "source_image": np.full(len(index), source.name, dtype=object),
        "source_index": index.astype(np.int64),
        **{c: np.round(coords[:, k]).astype(np.int64) for k, c in enumerate(BOX_COLUMNS)},
        "label": labels.astype(object),
        "qc_pass": np.ones(len(index), bool),
        "qc_reason": qc.join_reasons(failed, len(index)),
        "qc_clipped": inside < 1,
        "qc_inside": inside,
        "qc_size_ratio": np.ones(len(index)),
        "qc_n_cells": n_cells.astype(np.int64),
        "qc_blur": blur,
        "box_height": np.round(coords[:, 2] - coords[:, 0]).astype(np.int64),
        "box_width": np.round(coords[:, 3] - coords[:, 1]).astype(np.int64),
        "scale": windows[:, 2] / size,
    }
    return SourceResult(crops, obs, len(problems), skipped, n_channels, messages=messages)


def _unreadable(source: ImageSource, boxes: Boxes | None, reason: str, what: str, size: int) -> SourceResult:
    n = 0 if boxes is None else len(boxes.index)
    return SourceResult(
        np.zeros((0, size, size, 1), np.uint8),
        {},
        n,
        collections.Counter({reason: n} if n else {}),
        image_problem=reason,
        messages=[f"{source.path}: {what}; its {n} box(es) skipped ({reason})"],
        problem_text=what,
    )


def pil_levels(im: Image.Image, boxes: np.ndarray, cfg: CropConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """The normalisation lookup table (256, C) uint8 of an 8-bit PIL image (None for 'none') and
    its background colour (C,) in raw values."""
    bands = len(im.getbands())
    lut = None
    if cfg.normalise != "none":
        hist = np.asarray(im.histogram(), np.int64).reshape(bands, 256)
        lo, hi = histogram_levels(hist, cfg.percentiles)
        lut = rescale_to_uint8(np.arange(256, dtype=np.float32)[:, None].repeat(bands, axis=1), lo, hi)
    w, h = im.size
    factor = max(1.0, max(w, h) / GRID)
    gw, gh = max(1, round(w / factor)), max(1, round(h / factor))
    grid = pil_to_array(im.resize((gw, gh), Image.Resampling.NEAREST))
    raw = outside_boxes_median(grid, boxes, h / gh, w / gw) if len(boxes) else None
    if raw is None:
        strips = [im.crop(b) for b in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
        raw = border_median(np.concatenate([pil_to_array(s).reshape(1, -1, bands) for s in strips], axis=1))
    return lut, np.clip(np.round(raw), 0, 255).astype(np.int64)


def run_sources(tasks: list[tuple], workers: int) -> list[SourceResult]:
    if workers <= 1 or len(tasks) <= 1:
        return [crop_source(*t) for t in track(tasks, "crop", unit="image")]
    # spawn: forking a process that may hold threads (BLAS, torch) can deadlock
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
        chunk = max(1, len(tasks) // (workers * 8))
        return list(
            track(pool.map(_crop_source_star, tasks, chunksize=chunk), "crop", total=len(tasks), unit="image")
        )


def _crop_source_star(task: tuple) -> SourceResult:
    return crop_source(*task)
