"""The crop stage: normalise each image, cut one square crop per cell, check it, store the set.

For each source image:

1. **Normalise** per image and per channel: the ``percentiles`` (default 0.5 and 99.5) map
   to 0 and 255 and the result is uint8, whatever the input dtype (16-bit multi-channel
   images keep every channel). ``normalise="none"`` maps the dtype's range instead (uint8
   unchanged; floats are taken as 0..1). Array files (NPZ, IDX) are normalised as one stack,
   so intensities stay comparable between their cells.
2. **Crop** each box: a square window centred on the box, of side
   ``max(h, w) * (1 + 2 * margin)``, or of side ``window_px`` for every cell (so absolute size
   survives), resized to ``size`` by area averaging (anti-aliased; bilinear when enlarging).
   ``obs`` records each crop's ``box_height``, ``box_width`` and ``scale`` (source pixels per crop
   pixel); the store's summary records ``pixel_size_um`` (the input's, when given) and
   ``crop_pixel_size_um`` (one number with a fixed window). Parts of the window outside the image are filled with the image's
   background colour (:func:`background_level`: the median outside all boxes). Single-cell
   inputs (a folder, TIFFs, NPZ, IDX) are already crops: the window is the image itself,
   squared. 8-bit images are cropped first and their crops normalised with the image's lookup
   table (the same result within a grey level, at a fraction of the cost).
3. **Stain** (``stain="reinhard"``, RGB only): Reinhard et al. (2001) colour transfer; each
   crop's CIELAB values are shifted and scaled so that its image's LAB mean and standard
   deviation match a reference: the image ``stain_reference`` or, by default,
   :data:`GIEMSA_REFERENCE`, measured on the six BBBC041 training smears after the default
   percentile normalisation. The image's statistics are measured after step 1.
4. **QC** (:mod:`infogan_cells.preprocess.qc`): ``qc_clipped``, ``qc_inside``, ``qc_n_cells``,
   ``qc_blur`` per crop; ``qc_size_ratio`` over the set. A box running past the image edge is
   kept and flagged (``qc_clipped``), failing only when less than half of it is inside.
5. **Align** (``align``): rotate so the cell's major axis (``regionprops`` orientation of its
   mask) is horizontal. **Mask** (``mask_background``): pixels outside the cell's mask take the
   background level.

Boxes that cannot be cropped are skipped and counted by reason in the summary
(``missing_image``, ``unreadable_image``, ``image_too_large`` (over PIL's decompression-bomb
limit), ``non_finite`` (a float image, or a cell of a float stack, holding NaN or infinity),
``bad_box`` (min > max), ``empty_box`` (zero size), ``outside_image``, ``bad_row``); crops that
fail QC are dropped and counted, or kept and flagged with ``keep_failed``. Always
``n_crops = n_boxes - sum(skipped) - n_qc_dropped``. A stage that ends with no crop at all
(:func:`crop` on a whole input, :func:`merge_crops`) raises :class:`InputError` naming the
input and why, and writes nothing; a per-image job (``images=``) may end empty, its gather may not.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.cells import BOX_COLUMNS, ImageSource
from infogan_cells.data.images import pil_to_array
from infogan_cells.data.readers import read_cells
from infogan_cells.data.store import REQUIRED_OBS, merge_summaries, read_crop_store, write_crop_store
from infogan_cells.errors import InputError
from infogan_cells.preprocess import qc
from infogan_cells.preprocess.montage import write_qc_montages
from infogan_cells.preprocess.normalise import GIEMSA_REFERENCE, lab_stats, normalise, subsample
from infogan_cells.preprocess.source import Boxes, SourceResult, run_sources

log = logging.getLogger(__name__)

#: gzip level of the crop store's images: level 1 is within 2% of level 4's size on crops, in
#: two thirds of the time (the write is most of the stage's time on JPEG smears).
STORE_GZIP_LEVEL = 1
QC_COLUMNS = ("qc_clipped", "qc_inside", "qc_size_ratio", "qc_n_cells", "qc_blur")
#: Each crop's box size and scale (source pixels per crop pixel), so absolute size can be recovered.
SCALE_COLUMNS = ("box_height", "box_width", "scale")
OBS_COLUMNS = (*REQUIRED_OBS, *QC_COLUMNS, *SCALE_COLUMNS)


# --------------------------------------------------------------------------------------
# Image functions: arrays in, new arrays out


# --------------------------------------------------------------------------------------
# The stage


def crop(
    input_path: str | Path,
    out_path: str | Path,
    input_cfg: InputConfig,
    crop_cfg: CropConfig,
    *,
    images: Sequence[str] | None = None,
    config_text: str = "",
    montage_dir: str | Path | None = None,
    montages: bool = True,
) -> dict:
    """Crop every cell of an input into a crop store (``crops.h5`` + ``crops.csv`` + QC montages).

    ``images`` limits the job to these source images (one workflow job per image); the
    set-wide size check is then left to :func:`merge_crops`. Montages go to ``montage_dir``
    (default: beside the store), unless ``montages`` is false. Returns the summary, also
    stored in the store's attributes.
    """
    out_path = Path(out_path)
    cells = read_cells(
        input_path,
        input_cfg.format,
        segment=input_cfg.segment,
        images=list(images) if images is not None else None,
    )
    reference = _stain_reference(crop_cfg)
    groups = cells.boxes.groupby("source").indices if len(cells.boxes) else {}
    tasks = []
    for i, source in enumerate(cells.sources):
        rows = cells.boxes.iloc[groups.get(i, [])]
        boxes = (
            None
            if cells.segment
            else Boxes(
                rows["source_index"].to_numpy(np.int64),
                rows[list(BOX_COLUMNS)].to_numpy(np.float64),
                rows["label"].astype(str).to_numpy(dtype=object),
            )
        )
        tasks.append((source, boxes, cells.segment, crop_cfg, reference))
    results = run_sources(tasks, crop_cfg.workers)

    channel_names = _channel_names(cells.channel_names, results, cells.sources)
    nonempty = [r for r in results if r.n_crops]
    size = crop_cfg.size
    crops = (
        np.concatenate([r.crops for r in nonempty])
        if nonempty
        else np.zeros((0, size, size, len(channel_names)), np.uint8)
    )
    obs = (
        pd.DataFrame({c: np.concatenate([r.obs[c] for r in nonempty]) for c in OBS_COLUMNS})
        if nonempty
        else _empty_obs()
    )
    skipped = collections.Counter()
    skipped_images = collections.Counter()
    for r in results:
        skipped.update(r.skipped)
        if r.image_problem:
            skipped_images[r.image_problem] += 1
        for message in r.messages:
            log.warning("%s", message)
    for _, reason in cells.skipped:
        skipped[reason] += 1

    deferred = images is not None
    _set_size_check(obs, crop_cfg, np.ones(len(obs), bool), verdict=not deferred)
    if not deferred:
        problems = [
            f"{s.path}: {r.problem_text}"
            for s, r in zip(cells.sources, results, strict=True)
            if r.image_problem
        ]
        _refuse_empty(str(cells.path), obs, crop_cfg, len(cells.sources), skipped, problems)
    summary = {
        "input": str(cells.path),
        "format": cells.format,
        "n_sources": len(cells.sources),
        "n_images_read": sum(r.image_problem is None for r in results),
        "n_boxes": sum(r.n_boxes for r in results) + len(cells.skipped),
        "skipped": dict(sorted(skipped.items())),
        "skipped_images": dict(sorted(skipped_images.items())),
        "size_qc": "deferred" if deferred else "applied",
    }
    montages_to = montage_dir if montages else False
    _finish(crops, obs, channel_names, summary, crop_cfg, out_path, config_text, montages_to)
    return summary


def merge_crops(
    parts: Sequence[str | Path],
    out_path: str | Path,
    crop_cfg: CropConfig,
    *,
    config_text: str = "",
    montage_dir: str | Path | None = None,
) -> dict:
    """Join per-image crop stores into one, run the set-wide size check, write montages.

    The size check's median is taken over the crops that pass the other checks, as
    :func:`crop` does on a whole input, so both routes keep the same crops. Parts that
    already had the check (a whole-input job) are joined as they are.
    """
    if not parts:
        raise InputError("merge-crops: no partial crop stores given")
    sets = [read_crop_store(p) for p in parts]
    for path, part in zip(parts, sets, strict=True):
        missing = [c for c in OBS_COLUMNS if c not in part.obs.columns]
        if missing:
            raise InputError(
                f"{path}: not a crop store made by `infogan-cells crop` (no {', '.join(missing)})"
            )
    shapes = {s.images.shape[1:] for s in sets if len(s)}
    if len(shapes) > 1:
        raise InputError(f"partial crop stores differ in crop shape: {sorted(shapes)}")
    channel_names = next((s.channel_names for s in sets if s.channel_names), [])
    nonempty = [s for s in sets if len(s)]
    crops = (
        np.concatenate([s.images for s in nonempty])
        if nonempty
        else np.zeros((0, crop_cfg.size, crop_cfg.size, max(1, len(channel_names))), np.uint8)
    )
    obs = pd.concat([s.obs for s in nonempty], ignore_index=True) if nonempty else sets[0].obs
    parts_summary = merge_summaries([s.summary for s in sets])
    carried = parts_summary.pop("qc_dropped", {})
    carried_n = parts_summary.pop("n_qc_dropped", 0)
    summary = {
        k: v
        for k, v in parts_summary.items()
        if k not in ("qc_failed", "n_qc_failed", "n_crops", "n_clipped")
    }
    deferred = np.concatenate(
        [np.full(len(s), s.summary.get("size_qc") == "deferred") for s in nonempty] or [np.zeros(0, bool)]
    )
    if deferred.any():
        _set_size_check(obs, crop_cfg, deferred, verdict=True)
    inputs = sorted({str(s.summary.get("input", "")) for s in sets} - {""})
    _refuse_empty(
        f"{', '.join(inputs) or 'merge-crops'} ({len(sets)} partial stores)",
        obs,
        crop_cfg,
        int(summary.get("n_sources", 0)),
        collections.Counter(summary.get("skipped", {})),
        [],
    )
    summary["size_qc"] = "applied"
    summary.pop("keep_failed", None)
    _finish(
        crops,
        obs,
        channel_names,
        summary,
        crop_cfg,
        Path(out_path),
        config_text or sets[0].config,
        montage_dir,
        carried=carried,
        carried_n=carried_n,
    )
    return summary


def _refuse_empty(
    what: str,
    obs: pd.DataFrame,
    cfg: CropConfig,
    n_sources: int,
    skipped: collections.Counter,
    problems: list[str],
) -> None:
    """Raise :class:`InputError` when no crop would be stored: one line saying why.

    ``problems`` names the images that could not be read (the first three are listed).
    """
    passed = obs["qc_pass"].to_numpy(bool)
    if cfg.keep_failed and len(obs) or passed.any():
        return
    why = []
    if problems:
        why.append(
            f"{len(problems)} unreadable image(s): "
            + "; ".join(problems[:3])
            + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        )
    if skipped:
        why.append("boxes skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())))
    if len(obs):
        failures = collections.Counter(r for rs in qc.split_reasons(obs["qc_reason"]) for r in rs)
        why.append(
            f"all {len(obs)} crop(s) failed QC ("
            + ", ".join(f"{reason} {n}" for reason, n in sorted(failures.items()))
            + "; crop.keep_failed keeps them)"
        )
    if not why:
        why.append("no boxes in any image")
    raise InputError(f"{what}: no crops from {n_sources} image(s): {'; '.join(why)}; nothing written")


# --------------------------------------------------------------------------------------
# Set-wide QC and writing


def _set_size_check(obs: pd.DataFrame, cfg: CropConfig, rows: np.ndarray, *, verdict: bool) -> None:
    """Measure ``qc_size_ratio`` of ``rows`` against the median box area of those of them that
    pass the other checks; with ``verdict``, set their ``size`` failures. Updates ``qc_reason``
    and ``qc_pass`` in place.

    A per-image job measures against its own median without a verdict; ``merge_crops`` then
    measures against the whole set's and gives it.
    """
    reasons = qc.split_reasons(obs["qc_reason"])
    failed = {r: np.array([r in rs for rs in reasons], bool) for r in qc.REASONS}
    others = np.zeros(len(obs), bool)
    for reason in ("clipped", "cells", "blur"):
        others |= failed[reason]
    areas = ((obs["max_row"] - obs["min_row"]) * (obs["max_col"] - obs["min_col"])).to_numpy(np.float64)
    reference = areas[rows & ~others]
    ratio = qc.size_ratio(areas[rows], reference if reference.size else areas[rows])
    column = obs["qc_size_ratio"].to_numpy(np.float64).copy()
    column[rows] = ratio
    obs["qc_size_ratio"] = column
    if verdict:
        failed["size"][rows] = (ratio > cfg.qc_size_ratio) | (ratio < 1 / cfg.qc_size_ratio)
    obs["qc_reason"] = qc.join_reasons(failed, len(obs))
    obs["qc_pass"] = obs["qc_reason"] == ""


def _finish(
    crops: np.ndarray,
    obs: pd.DataFrame,
    channel_names: list[str],
    summary: dict,
    cfg: CropConfig,
    out_path: Path,
    config_text: str,
    montage_dir,
    *,
    carried: dict | None = None,
    carried_n: int = 0,
) -> None:
    """Count QC failures, drop them (unless keep_failed), write the store and the montages.

    ``carried`` / ``carried_n``: failures (by reason) and crops already dropped by the parts
    of a merge, which are no longer in ``obs``. ``montage_dir`` False: no montages.
    """
    passed = obs["qc_pass"].to_numpy(bool)
    failures = collections.Counter(r for rs in qc.split_reasons(obs["qc_reason"]) for r in rs)
    keep = passed | cfg.keep_failed
    dropped = {} if cfg.keep_failed else dict(failures)
    summary["qc_failed"] = dict(sorted(merge_summaries([carried or {}, dict(failures)]).items()))
    summary["qc_dropped"] = dict(sorted(merge_summaries([carried or {}, dropped]).items()))
    summary["keep_failed"] = cfg.keep_failed
    summary["n_qc_failed"] = carried_n + int((~passed).sum())
    summary["n_qc_dropped"] = carried_n + int((~keep).sum())
    summary["n_crops"] = int(keep.sum())
    summary["n_clipped"] = int(obs["qc_clipped"].to_numpy(bool)[keep].sum())
    # Set from the config, not added up over the parts of a merge.
    summary["window_px"] = cfg.window_px
    summary["pixel_size_um"] = cfg.pixel_size_um
    summary["crop_pixel_size_um"] = cfg.crop_pixel_size_um
    log.info(
        "%s: %d crops from %d boxes in %d images; skipped %s; QC failures %s%s",
        out_path,
        summary["n_crops"],
        summary["n_boxes"],
        summary["n_sources"],
        summary["skipped"] or "none",
        summary["qc_failed"] or "none",
        " (kept, flagged)" if cfg.keep_failed else " (dropped)",
    )
    obs = obs[list(OBS_COLUMNS)]
    write_crop_store(
        out_path,
        crops[keep],
        obs[keep].reset_index(drop=True),
        channel_names,
        summary=summary,
        config=config_text,
        compression=STORE_GZIP_LEVEL,
    )
    if montage_dir is not False:
        folder = Path(montage_dir) if montage_dir is not None else out_path.parent
        write_qc_montages(folder, out_path.stem, crops, obs["label"].to_numpy(), passed, crops[~passed])


def _stain_reference(cfg: CropConfig) -> np.ndarray | None:
    if cfg.stain == "none":
        return None
    if cfg.stain_reference is None:
        return GIEMSA_REFERENCE
    path = Path(cfg.stain_reference)
    try:
        rgb = pil_to_array(ImageSource(path.name, path).decode())
    except OSError as err:
        raise InputError(f"config key 'crop.stain_reference': cannot read {path} ({err})") from None
    if rgb.shape[2] != 3:
        raise InputError(f"config key 'crop.stain_reference': {path} is not an RGB image")
    return lab_stats(subsample(normalise(rgb, method=cfg.normalise, percentiles=cfg.percentiles)))


def _channel_names(
    given: list[str] | None, results: list[SourceResult], sources: list[ImageSource]
) -> list[str]:
    counts = [r.n_channels for r in results]
    known = [c for c in counts if c is not None]
    c = collections.Counter(known).most_common(1)[0][0] if known else (len(given) if given else 3)
    odd = next((s for s, n in zip(sources, counts, strict=True) if n is not None and n != c), None)
    if odd is not None:
        raise InputError(
            f"{odd.path}: has {counts[sources.index(odd)]} channel(s) where the other images "
            f"have {c}; convert the images to one kind first"
        )
    if given and len(given) == c:
        return list(given)
    return {1: ["gray"], 3: ["R", "G", "B"]}.get(c, [f"ch{k}" for k in range(c)])


def _empty_obs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_image": pd.Series([], dtype=object),
            "source_index": pd.Series([], dtype=np.int64),
            **{c: pd.Series([], dtype=np.int64) for c in BOX_COLUMNS},
            "label": pd.Series([], dtype=object),
            "qc_pass": pd.Series([], dtype=bool),
            "qc_reason": pd.Series([], dtype=object),
            "qc_clipped": pd.Series([], dtype=bool),
            "qc_inside": pd.Series([], dtype=np.float64),
            "qc_size_ratio": pd.Series([], dtype=np.float64),
            "qc_n_cells": pd.Series([], dtype=np.int64),
            "qc_blur": pd.Series([], dtype=np.float64),
            "box_height": pd.Series([], dtype=np.int64),
            "box_width": pd.Series([], dtype=np.int64),
            "scale": pd.Series([], dtype=np.float64),
        }
    )
