"""Figures of a training run: sample grids, their animation over training, and the loss curves.

Grids and the GIF are drawn with PIL; the loss curve with matplotlib's object API on an Agg
canvas (no pyplot, so no global backend state and no display is touched). Every file is written
atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from infogan_cells._io import atomic_path
from infogan_cells.preprocess.montage import tile

__all__ = ["image_grid", "save_grid", "save_gif", "plot_losses"]


def _to_rgb_tiles(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, H, W', 3): 1 channel grey, 3 channels RGB, otherwise each channel
    as a grey tile beside the others (W' = C * W)."""
    n, c, h, w = images.shape
    if c == 3:
        return images.transpose(0, 2, 3, 1)
    if c == 1:
        return np.repeat(images.transpose(0, 2, 3, 1), 3, axis=3)
    side = images.transpose(0, 2, 1, 3).reshape(n, h, c * w)
    return np.repeat(side[..., None], 3, axis=3)


def image_grid(
    images: np.ndarray, n_cols: int, *, pad: int = 1, pad_value: int = 255, group_cols: int | None = None
) -> np.ndarray:
    """Tile images into one picture.

    images : (N, C, H, W) uint8 in row-major order, or float in [-1, 1]; n_cols : tiles per row.
    ``group_cols`` adds a wider gap after every that many columns (separates panels).
    Returns (rows, cols, 3) uint8.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.rint((images.astype(np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
    return tile(_to_rgb_tiles(images), n_cols, pad=pad, fill=pad_value, group_cols=group_cols)


def save_grid(path: str | Path, images: np.ndarray, n_cols: int, *, scale: int = 1, **kwargs) -> np.ndarray:
    """Write :func:`image_grid` as a PNG (enlarged ``scale`` times, nearest neighbour); return the grid."""
    grid = image_grid(images, n_cols, **kwargs)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return grid


def save_gif(path: str | Path, frames: Sequence[str | Path | np.ndarray], *, duration_ms: int = 400) -> None:
    """Animate frames (PNG paths or (H, W, 3) uint8 arrays) into a looping GIF; the last frame lingers."""
    if not frames:
        return
    imgs = []
    for f in frames:
        if isinstance(f, np.ndarray):
            imgs.append(Image.fromarray(f))
        else:
            with Image.open(f) as im:
                imgs.append(im.convert("RGB"))
    size = imgs[-1].size
    imgs = [im if im.size == size else im.resize(size, Image.NEAREST) for im in imgs]
    durations = [duration_ms] * (len(imgs) - 1) + [duration_ms * 5]
    with atomic_path(path) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=0)


def plot_losses(path: str | Path, records: Sequence[Mapping], *, x_key: str = "kimg") -> None:
    """Plot every ``Loss/...`` series of the tick records against ``x_key``, one panel per network."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({k for r in records for k in r if k.startswith("Loss/")})
    groups = sorted({k.split("/")[1] for k in keys})
    fig = Figure(figsize=(4 * max(1, len(groups)), 3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(groups)), squeeze=False)[0]
    x = np.array([r.get(x_key, np.nan) for r in records], dtype=float)
    for ax, group in zip(axes, groups, strict=False):
        for k in keys:
            if k.split("/")[1] != group:
                continue
            y = np.array([r.get(k, np.nan) for r in records], dtype=float)
            ax.plot(x, y, label=k.split("/", 2)[2], lw=1.2)
        ax.set_title(group)
        ax.set_xlabel(x_key)
        ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
