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
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.readers import BOX_COLUMNS, ImageSource, pil_to_array, read_cells, segment_boxes
from infogan_cells.data.store import REQUIRED_OBS, merge_summaries, read_crop_store, write_crop_store
from infogan_cells.errors import InputError
from infogan_cells.preprocess import qc
from infogan_cells.preprocess.montage import write_qc_montages
from infogan_cells.progress import track

log = logging.getLogger(__name__)

#: CIELAB mean (row 0) and standard deviation (row 1) of (L, a, b) of a Giemsa-stained thin
#: smear: the average of the per-image statistics of the six BBBC041 training images in
#: ../shared/data/bbbc041 after percentile normalisation (0.5, 99.5). The default stain reference.
GIEMSA_REFERENCE = np.array([[69.04, 2.27, -5.57], [32.37, 4.79, 8.49]])

#: gzip level of the crop store's images: level 1 is within 2% of level 4's size on crops, in
#: two thirds of the time (the write is most of the stage's time on JPEG smears).
STORE_GZIP_LEVEL = 1
#: Side of the sample of each crop on which cells are counted.
QC_SIZE = 32
#: Long side, in pixels, of the regular sample of an image used to find its background.
GRID = 200

QC_COLUMNS = ("qc_clipped", "qc_inside", "qc_size_ratio", "qc_n_cells", "qc_blur")
#: Each crop's box size and scale (source pixels per crop pixel), so absolute size can be recovered.
SCALE_COLUMNS = ("box_height", "box_width", "scale")
OBS_COLUMNS = (*REQUIRED_OBS, *QC_COLUMNS, *SCALE_COLUMNS)


# --------------------------------------------------------------------------------------
# Image functions: arrays in, new arrays out


def channel_limits(
    image: np.ndarray, *, method: str = "percentile", percentiles: Sequence[float] = (0.5, 99.5)
) -> tuple[np.ndarray, np.ndarray]:
    """The values mapped to 0 and 255, per channel: ``(low (C,), high (C,))`` float64.

    ``image`` is (M, N, C) or a stack (K, M, N, C) of any real dtype. Large images are
    measured on a regular subsample of about two million pixels.
    """
    c = image.shape[-1]
    if method == "none":
        if image.dtype == bool:
            top = 1.0
        elif np.issubdtype(image.dtype, np.integer):
            top = float(np.iinfo(image.dtype).max)
        else:
            top = 1.0
        return np.zeros(c), np.full(c, top)
    pixels = image.reshape(-1, c)
    step = max(1, len(pixels) // 2_000_000)
    pixels = pixels[::step]
    if np.issubdtype(image.dtype, np.integer) and pixels.size:
        base = pixels.min(axis=0).astype(np.int64)
        span = int((pixels.max(axis=0).astype(np.int64) - base).max()) + 1
        if span <= 1 << 16:
            hist = np.stack(
                [np.bincount(pixels[:, k].astype(np.int64) - base[k], minlength=span) for k in range(c)]
            )
            lo, hi = _histogram_levels(hist, percentiles)
            return lo + base, hi + base
    pixels = pixels.astype(np.float64)
    lo, hi = np.percentile(pixels, list(percentiles), axis=0) if pixels.size else (np.zeros(c), np.ones(c))
    return lo, hi


def to_uint8(image: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map ``low``..``high`` (per channel, last axis) linearly onto 0..255, clipped: uint8, same shape."""
    low = np.asarray(low, np.float32)
    scale = np.where(high > low, 255.0 / np.maximum(np.asarray(high, np.float32) - low, 1e-12), 0.0)
    out = (image.astype(np.float32) - low) * scale.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def normalise(
    image: np.ndarray, *, method: str = "percentile", percentiles: Sequence[float] = (0.5, 99.5)
) -> np.ndarray:
    """Per-channel normalisation of an (M, N, C) image (or a (K, M, N, C) stack) to uint8."""
    lo, hi = channel_limits(image, method=method, percentiles=percentiles)
    return to_uint8(image, lo, hi)


def background_level(image: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """The background colour of an (M, N, C) image or a (K, M, N, C) stack: (C,) float64.

    The per-channel median of the pixels outside every box (sampled on a regular grid), or,
    without boxes or when they cover nearly all the image, of the border pixels. Dense smears
    can have cells on most of the border, hence the boxes.
    """
    if image.ndim == 3 and boxes is not None and len(boxes):
        step = max(1, max(image.shape[:2]) // GRID)
        found = _outside_boxes_median(image[::step, ::step], boxes, step, step)
        if found is not None:
            return found
    return _border_median(image)


def box_problems(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Why each box (K, 4) cannot be cropped from an image of ``shape`` (M, N): '' if it can.

    ``bad_box`` (min > max, or not a number), ``empty_box`` (zero height or width),
    ``outside_image`` (no pixel inside the image).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    out = np.full(len(boxes), "", dtype=object)
    outside = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= shape[0]) | (boxes[:, 1] >= shape[1])
    out[outside] = "outside_image"
    out[(h == 0) | (w == 0)] = "empty_box"
    out[~np.isfinite(boxes).all(axis=1) | (h < 0) | (w < 0)] = "bad_box"
    return out


def crop_windows(
    boxes: np.ndarray, *, margin: float = 0.15, whole: bool = False, window: int | None = None
) -> np.ndarray:
    """Square windows (K, 3) int64 (min_row, min_col, side) centred on boxes (K, 4).

    The side is ``max(h, w) * (1 + 2 * margin)``, or ``max(h, w)`` with ``whole`` (the box is
    the whole single-cell image, which already holds its context), or ``window`` for every box
    when given (a fixed window: every crop has the same scale).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if window is not None:
        side = np.full(len(boxes), float(window))
    else:
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (
            1 if whole else 1 + 2 * margin
        )
    side = np.maximum(1, np.round(side)).astype(np.int64)
    r0 = np.round((boxes[:, 0] + boxes[:, 2] - side) / 2).astype(np.int64)
    c0 = np.round((boxes[:, 1] + boxes[:, 3] - side) / 2).astype(np.int64)
    return np.stack([r0, c0, side], axis=1)


def crop_cells(
    image,
    boxes: np.ndarray,
    *,
    size: int = 64,
    margin: float = 0.15,
    background: Sequence[int] | None = None,
    whole: bool = False,
    window: int | None = None,
) -> np.ndarray:
    """Cut one square crop per box, centred on it, resized to ``size``.

    Parameters
    ----------
    image : (M, N, C) uint8 ndarray, or a PIL image (mode L or RGB)
        The normalised image.
    boxes : (K, 4) array_like
        (min_row, min_col, max_row, max_col), max exclusive; each must overlap the image.
    size : int
        Output side in pixels.
    margin : float
        Context around the box, as a fraction of its longer side, on each side.
    background : sequence of C ints, optional
        Fill for the parts of a window outside the image (default 0).
    whole : bool
        The boxes are whole single-cell images: no margin (see :func:`crop_windows`).
    window : int, optional
        A fixed window side in source pixels for every box, instead of one scaled to the box.

    Returns
    -------
    crops : (K, size, size, C) uint8 ndarray
        Downsizing averages over each output pixel's area (anti-aliased); enlarging is bilinear.
    """
    fill = None if background is None else np.asarray(background)
    return _crop_planes(
        _planes(image), boxes, size=size, margin=margin, fill=fill, whole=whole, window=window
    )


def _crop_planes(
    planes: list[Image.Image],
    boxes: np.ndarray,
    *,
    size: int,
    margin: float,
    fill: np.ndarray | None,
    whole: bool,
    lut: np.ndarray | None = None,
    window: int | None = None,
) -> np.ndarray:
    """:func:`crop_cells` on PIL images holding the channels; ``lut`` (256, C) maps the result.

    Each crop is pasted into one tall PIL image per plane, converted to an array once: a
    hundred small conversions cost more than the resizing.
    """
    n_channels = sum(len(p.getbands()) for p in planes)
    height, width = planes[0].height, planes[0].width
    fill = [int(v) for v in (fill if fill is not None else [0] * n_channels)]
    windows = crop_windows(boxes, margin=margin, whole=whole, window=window)
    n = len(windows)
    out = np.empty((n, size, size, n_channels), np.uint8)
    if n == 0:
        return out
    first = 0
    for plane in planes:
        bands = len(plane.getbands())
        value = tuple(fill[first : first + bands]) if bands > 1 else fill[first]
        atlas = Image.new(plane.mode, (size, size * n))
        for k, (r0, c0, side) in enumerate(windows.tolist()):
            resample = Image.Resampling.BOX if side >= size else Image.Resampling.BILINEAR
            if r0 >= 0 and c0 >= 0 and r0 + side <= height and c0 + side <= width:
                small = plane.resize((size, size), resample, box=(c0, r0, c0 + side, r0 + side))
            else:  # the window runs past the image: paste what is inside onto the background
                canvas = Image.new(plane.mode, (side, side), value)
                inside = plane.crop((max(c0, 0), max(r0, 0), min(c0 + side, width), min(r0 + side, height)))
                canvas.paste(inside, (max(c0, 0) - c0, max(r0, 0) - r0))
                small = canvas.resize((size, size), resample)
            atlas.paste(small, (0, k * size))
        if lut is not None:
            atlas = atlas.point(lut[:, first : first + bands].T.ravel().tolist())
        out[..., first : first + bands] = np.asarray(atlas).reshape(n, size, size, bands)
        first += bands
    return out


def box_regions(boxes: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """Where each box lies in its crop: (K, 4) int (min_row, min_col, max_row, max_col), clipped."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = size / windows[:, 2:3]
    corner = np.concatenate([windows[:, :2], windows[:, :2]], axis=1)
    region = np.round((boxes - corner) * scale)
    return np.clip(region, 0, size).astype(np.int64)


def align_cells(
    crops: np.ndarray, masks: np.ndarray, background: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each crop so its cell's major axis is horizontal: (crops, angles in degrees).

    ``masks`` (N, H, W) bool: each crop's cell. The angle comes from ``regionprops``
    orientation (the angle between the row axis and the major axis); crops with an empty
    mask are left as they are. Corners brought in from outside take ``background``.
    """
    from skimage.measure import regionprops

    out = crops.copy()
    angles = np.zeros(len(crops))
    planes_fill = [int(v) for v in background]
    for k, mask in enumerate(masks):
        if not mask.any():
            continue
        (props,) = regionprops(mask.astype(np.uint8))
        angle = 90.0 - np.degrees(props.orientation) % 180.0  # the smaller turn, in (-90, 90]
        angles[k] = angle
        first = 0
        for plane in _planes(crops[k]):
            bands = len(plane.getbands())
            value = tuple(planes_fill[first : first + bands]) if bands > 1 else planes_fill[first]
            rotated = np.asarray(plane.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=value))
            out[k, :, :, first : first + bands] = rotated if rotated.ndim == 3 else rotated[..., None]
            first += bands
    return out, angles


def lab_stats(rgb: np.ndarray) -> np.ndarray:
    """CIELAB mean and standard deviation of an RGB uint8 image (..., 3): (2, 3) float64."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, np.uint8).reshape(-1, 1, 3)).reshape(-1, 3)
    return np.stack([lab.mean(axis=0), lab.std(axis=0)])


def reinhard(rgb: np.ndarray, stats: np.ndarray, reference: np.ndarray = GIEMSA_REFERENCE) -> np.ndarray:
    """Reinhard colour transfer of RGB uint8 pixels (..., 3) whose image has LAB ``stats``.

    Each LAB channel becomes ``(x - mean) / std * ref_std + ref_mean``; returns uint8, same shape.
    """
    from skimage.color import lab2rgb, rgb2lab

    shape = rgb.shape
    lab = rgb2lab(np.asarray(rgb, np.uint8).reshape(-1, 1, 3))
    lab = (lab - stats[0]) / np.maximum(stats[1], 1e-6) * reference[1] + reference[0]
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, which is what we want
        warnings.simplefilter("ignore", UserWarning)
        out = lab2rgb(lab)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8).reshape(shape)


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
            else _Boxes(
                rows["source_index"].to_numpy(np.int64),
                rows[list(BOX_COLUMNS)].to_numpy(np.float64),
                rows["label"].astype(str).to_numpy(dtype=object),
            )
        )
        tasks.append((source, boxes, cells.segment, crop_cfg, reference))
    results = _run(tasks, crop_cfg.workers)

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
    _finish(
        crops,
        obs,
        channel_names,
        summary,
        crop_cfg,
        out_path,
        config_text,
        montage_dir if montages else False,
    )
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


# --------------------------------------------------------------------------------------
# One source image (runs in a worker process when crop.workers > 1)


class _Boxes(typing.NamedTuple):
    """The boxes of one source: ``index`` (K,) int64 (their ``source_index``), ``coords`` (K, 4)
    float64 (NaN: the whole image), ``labels`` (K,) str."""

    index: np.ndarray
    coords: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class _SourceResult:
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


def _crop_source(
    source: ImageSource, boxes: _Boxes | None, segment: bool, cfg: CropConfig, reference: np.ndarray | None
) -> _SourceResult:
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
        boxes = _Boxes(
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
        return _SourceResult(
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
        lut, raw_background = _pil_levels(decoded, known, cfg)
        crops = _crop_planes(
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
        sample = _subsample(decoded) if reference is not None else None  # for the stain statistics
        if sample is not None and lut is not None:
            sample = lut[sample, np.arange(n_channels)]
    else:
        measured = decoded if good_cells is None else decoded[good_cells]  # limits from finite cells only
        lo, hi = channel_limits(measured, method=cfg.normalise, percentiles=cfg.percentiles)
        background = to_uint8(background_level(measured, known), lo, hi)
        image = to_uint8(decoded if finite is None else np.where(finite, decoded, 0), lo, hi)
        sample = _subsample(image) if reference is not None else None
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
        crops = _mask_background(crops, background)

    inside = _inside_fraction(coords, shape)
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
    return _SourceResult(crops, obs, len(problems), skipped, n_channels, messages=messages)


def _unreadable(
    source: ImageSource, boxes: _Boxes | None, reason: str, what: str, size: int
) -> _SourceResult:
    n = 0 if boxes is None else len(boxes.index)
    return _SourceResult(
        np.zeros((0, size, size, 1), np.uint8),
        {},
        n,
        collections.Counter({reason: n} if n else {}),
        image_problem=reason,
        messages=[f"{source.path}: {what}; its {n} box(es) skipped ({reason})"],
        problem_text=what,
    )


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


def _pil_levels(im: Image.Image, boxes: np.ndarray, cfg: CropConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """The normalisation lookup table (256, C) uint8 of an 8-bit PIL image (None for 'none') and
    its background colour (C,) in raw values."""
    bands = len(im.getbands())
    lut = None
    if cfg.normalise != "none":
        hist = np.asarray(im.histogram(), np.int64).reshape(bands, 256)
        lo, hi = _histogram_levels(hist, cfg.percentiles)
        lut = to_uint8(np.arange(256, dtype=np.float32)[:, None].repeat(bands, axis=1), lo, hi)
    w, h = im.size
    factor = max(1.0, max(w, h) / GRID)
    gw, gh = max(1, round(w / factor)), max(1, round(h / factor))
    grid = pil_to_array(im.resize((gw, gh), Image.Resampling.NEAREST))
    raw = _outside_boxes_median(grid, boxes, h / gh, w / gw) if len(boxes) else None
    if raw is None:
        strips = [im.crop(b) for b in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
        raw = _border_median(np.concatenate([pil_to_array(s).reshape(1, -1, bands) for s in strips], axis=1))
    return lut, np.clip(np.round(raw), 0, 255).astype(np.int64)


def _outside_boxes_median(
    grid: np.ndarray, boxes: np.ndarray, row_step: float, col_step: float
) -> np.ndarray | None:
    """Median colour of a sampled image's pixels outside the boxes; None if under 5% are."""
    outside = np.ones(grid.shape[:2], bool)
    for r0, c0, r1, c1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        outside[
            max(0, int(r0 // row_step)) : max(0, int(np.ceil(r1 / row_step))),
            max(0, int(c0 // col_step)) : max(0, int(np.ceil(c1 / col_step))),
        ] = False
    if outside.mean() < 0.05:
        return None
    return np.median(grid[outside], axis=0).astype(np.float64)


def _border_median(image: np.ndarray) -> np.ndarray:
    stack = image if image.ndim == 4 else image[None]
    c = stack.shape[-1]
    ring = np.concatenate(
        [
            stack[:, 0].reshape(-1, c),
            stack[:, -1].reshape(-1, c),
            stack[:, :, 0].reshape(-1, c),
            stack[:, :, -1].reshape(-1, c),
        ]
    )
    return np.median(ring, axis=0).astype(np.float64)


def _histogram_levels(hist: np.ndarray, percentiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Levels (bin indices) at two percentiles of per-channel histograms (C, B)."""
    cum = np.cumsum(hist, axis=1, dtype=np.float64)
    total = cum[:, -1:]
    lo = np.argmax(cum >= np.maximum(total * percentiles[0] / 100, 1), axis=1)
    hi = np.argmax(cum >= np.maximum(total * percentiles[1] / 100, 1), axis=1)
    return lo.astype(np.float64), hi.astype(np.float64)


def _planes(image) -> list[Image.Image]:
    """PIL images covering the channels of an (M, N, C) uint8 array (RGB, or one L per channel)."""
    if isinstance(image, Image.Image):
        return [image]
    image = np.ascontiguousarray(image)
    if image.shape[2] == 3:
        return [Image.fromarray(image, "RGB")]
    return [Image.fromarray(np.ascontiguousarray(image[:, :, k]), "L") for k in range(image.shape[2])]


def _subsample(image) -> np.ndarray:
    """About 250,000 pixels (P, C) of an image or stack, for colour statistics."""
    if isinstance(image, Image.Image):
        image = pil_to_array(image.reduce(4) if min(image.size) >= 64 else image)
    pixels = image.reshape(-1, image.shape[-1])
    return pixels[:: max(1, len(pixels) // 250_000)]


def _inside_fraction(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h = np.clip(np.minimum(boxes[:, 2], shape[0]) - np.maximum(boxes[:, 0], 0), 0, None)
    w = np.clip(np.minimum(boxes[:, 3], shape[1]) - np.maximum(boxes[:, 1], 0), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.divide(h * w, area, out=np.ones(len(boxes)), where=area > 0)


def _mask_background(crops: np.ndarray, background: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    size = crops.shape[1]
    centre = np.tile(np.array([[size // 4, size // 4, size - size // 4, size - size // 4]]), (len(crops), 1))
    distance = qc.foreground(crops, background)
    masks = qc.main_component(qc.cell_masks(distance, qc.otsu_levels(distance)), centre)
    masks = np.stack([ndi.binary_dilation(m) for m in masks])
    return np.where(masks[..., None], crops, np.asarray(background, np.uint8)).astype(np.uint8)


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


def _run(tasks: list[tuple], workers: int) -> list[_SourceResult]:
    if workers <= 1 or len(tasks) <= 1:
        return [_crop_source(*t) for t in track(tasks, "crop", unit="image")]
    # spawn: forking a process that may hold threads (BLAS, torch) can deadlock
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
        chunk = max(1, len(tasks) // (workers * 8))
        return list(
            track(pool.map(_crop_source_star, tasks, chunksize=chunk), "crop", total=len(tasks), unit="image")
        )


def _crop_source_star(task: tuple) -> _SourceResult:
    return _crop_source(*task)


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
    return lab_stats(_subsample(normalise(rgb, method=cfg.normalise, percentiles=cfg.percentiles)))


def _channel_names(
    given: list[str] | None, results: list[_SourceResult], sources: list[ImageSource]
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
