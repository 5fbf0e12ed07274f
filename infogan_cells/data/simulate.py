"""Procedural Giemsa-like thin blood smears: the pipeline's default input and a ground truth.

The images need no download and their labels are exact, so the rest of the pipeline (crop,
train, analyse) can run and be tested end to end. Each smear shows red blood cells of varied
size and shape with a central pallor, some of them touching or overlapping a little; a few
lobed leukocytes; platelets in the background; and red blood cells parasitised at one of four
stages, drawn to be told apart at a 64 px crop:

ring
    a thin blue-purple ring with one (sometimes two) dark red-purple chromatin dots;
trophozoite
    a larger, irregular (amoeboid) blue-purple cytoplasm with a vacuole, one or two chromatin
    masses and a few fine pigment grains, in a slightly enlarged cell;
schizont
    an enlarged cell filled with pale cytoplasm, 10-20 chromatin dots (merozoites) and a
    central clump of dark brown haemozoin;
gametocyte
    a large round cell filled with dense purple parasite, one diffuse chromatin mass and
    pigment granules scattered throughout.

Images are rendered in optical density (Beer-Lambert): every stain adds absorbance, so
overlapping cells darken where they overlap. Each image draws its own stain colours (pink to
lavender), illumination gradient, blur and noise.

Border cells: parasitised cells and leukocytes are always placed wholly inside the image, so
every stage box shows a whole cell. Uninfected red blood cells may be cut by the border (their
centre lies inside); they are drawn as cut and their box is clipped to the image, as in BBBC041.

Randomness: image ``k`` uses the ``k``-th child of ``np.random.default_rng(config.seed)``, so it
is byte-identical whatever ``n_images`` is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from infogan_cells._io import atomic_path, write_json_atomic
from infogan_cells.config import SimulateConfig
from infogan_cells.data.smear_cells import LEUKOCYTE, RBC, draw_cell, draw_platelets

log = logging.getLogger(__name__)

#: Every category the simulator writes, in the order of the sampling probabilities.
CATEGORIES = (RBC, *SimulateConfig.STAGES, LEUKOCYTE)

# Radius of a cell relative to an uninfected red blood cell (low, high): P. vivax enlarges the
# cells it infects as the parasite grows; a neutrophil is about twice an erythrocyte's diameter.
_ENLARGEMENT = {
    RBC: (1.0, 1.0),
    "ring": (1.0, 1.08),
    "trophozoite": (1.08, 1.22),
    "schizont": (1.2, 1.38),
    "gametocyte": (1.32, 1.5),
    LEUKOCYTE: (1.65, 2.0),
}

# Optical density (absorbance, R G B) of one unit of each stain; per image they are rescaled.
_OD = {
    "rbc_pink": (0.08, 0.36, 0.24),
    "rbc_lavender": (0.28, 0.38, 0.10),
    "cytoplasm": (0.85, 0.95, 0.28),  # parasite cytoplasm: Giemsa blue-purple
    "chromatin": (0.95, 2.2, 0.75),  # red-purple
    "haemozoin": (1.35, 1.6, 2.0),  # brown-black pigment
    "nucleus": (1.25, 1.7, 0.55),  # leukocyte nucleus: dark purple
    "wbc_cytoplasm": (0.13, 0.22, 0.08),
    "platelet": (0.6, 1.0, 0.35),
    "plasma": (0.015, 0.035, 0.025),
}

# Smallest centre distance between two cells, as a fraction of their summed radii (< 1: they may
# overlap a little), and the chance that a cell is placed against one already placed (clumps).
_MIN_GAP = 0.86
_CLUMP_P = 0.55
_MAX_TRIES = 80


def simulate_smears(out_dir: str | os.PathLike, config: SimulateConfig) -> Path:
    """Write ``config.n_images`` simulated smears and their boxes; return the annotations path.

    Writes ``out_dir/images/smear_0000.png``, ... (RGB uint8, ``image_rows`` x ``image_cols``)
    and ``out_dir/annotations.json`` in BBBC041 format: one entry per image with its MD5
    ``checksum``, ``pathname`` (``/images/smear_0000.png``) and ``shape``, and its ``objects``,
    each a ``bounding_box`` (``minimum``/``maximum`` row ``r`` and column ``c``, maximum
    exclusive) and a ``category`` from :data:`CATEGORIES`. Every file is written atomically.

    Raises :class:`~infogan_cells.errors.ConfigError` if ``config.stage_fractions`` is invalid.
    """
    config.check("simulate.")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    counts: Counter = Counter()
    for k, rng in enumerate(np.random.default_rng(config.seed).spawn(config.n_images)):
        image, objects = render_smear(config, rng)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # noise compresses poorly anyway
        data = buf.getvalue()
        name = f"smear_{k:04d}.png"
        checksum = hashlib.md5(data, usedforsecurity=False).hexdigest()
        with atomic_path(image_dir / name) as tmp:
            tmp.write_bytes(data)
        entries.append(
            {
                "image": {
                    "checksum": checksum,
                    "pathname": f"/images/{name}",
                    "shape": {"r": image.shape[0], "c": image.shape[1], "channels": 3},
                },
                "objects": [
                    {
                        "bounding_box": {
                            "minimum": {"r": b[0], "c": b[1]},
                            "maximum": {"r": b[2], "c": b[3]},
                        },
                        "category": cat,
                    }
                    for cat, b in objects
                ],
            }
        )
        counts.update(cat for cat, _ in objects)
        log.debug("%s: %d cells", name, len(objects))
    path = out_dir / "annotations.json"
    write_json_atomic(path, entries)
    log.info(
        "simulated %d smears in %s: %s",
        config.n_images,
        out_dir,
        ", ".join(f"{counts[c]} {c}" for c in CATEGORIES),
    )
    return path


def render_smear(
    config: SimulateConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """Render one smear.

    Returns
    -------
    image : (image_rows, image_cols, 3) uint8 ndarray
        RGB.
    objects : list of (category, bbox)
        One per cell, sorted by bbox; ``bbox`` is (min_row, min_col, max_row, max_col) with the
        maxima exclusive, tight around the cell's outline and within the image.
    """
    shape = (config.image_rows, config.image_cols)
    stains = _image_stains(rng)
    cats, radii = _sample_cells(config, rng)
    centres, keep = _place_cells(shape, cats, radii, rng)
    if not keep.all():
        log.debug("%d of %d cells did not fit and were left out", (~keep).sum(), keep.size)
    od = _background(shape, stains, rng)
    objects = []
    for cat, radius, centre in zip(cats[keep], radii[keep], centres[keep], strict=True):
        bbox = draw_cell(od, str(cat), float(radius), centre, stains, rng)
        if bbox is not None:
            objects.append((str(cat), bbox))
    draw_platelets(od, centres[keep], radii[keep], config.rbc_radius, stains, rng)
    image = _expose(od, rng)
    objects.sort(key=lambda o: o[1])
    return image, objects


# --------------------------------------------------------------------------------------
# Per-image appearance


def _image_stains(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """This image's stain OD vectors: pink-to-lavender erythrocytes, stronger or weaker Giemsa."""
    lavender = 0.7 * rng.uniform(0, 1) ** 2
    eosin = rng.uniform(0.8, 1.2)
    azure = rng.uniform(0.85, 1.2)
    out = {name: np.asarray(v, dtype=np.float32) * azure for name, v in _OD.items()}
    out["rbc"] = ((1 - lavender) * out.pop("rbc_pink") + lavender * out.pop("rbc_lavender")) * eosin / azure
    jitter = np.exp(rng.normal(0, 0.06, 3)).astype(np.float32)
    return {name: (v * jitter).astype(np.float32) for name, v in out.items()}


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, n_waves: int = 4) -> np.ndarray:
    """A (rows, cols) float32 field of a few random long plane waves, values about in [-1, 1]."""
    r = np.linspace(0, 2 * np.pi, shape[0], dtype=np.float32)[:, None]
    c = np.linspace(0, 2 * np.pi, shape[1], dtype=np.float32)[None, :]
    field = np.zeros(shape, np.float32)
    for _ in range(n_waves):
        fr, fc, phase = (float(x) for x in rng.uniform([-1.5, -1.5, 0], [1.5, 1.5, 2 * np.pi]))
        # cos(a + b) as outer products: far cheaper than a cosine per pixel.
        field += np.cos(fr * r + phase) * np.cos(fc * c) - np.sin(fr * r + phase) * np.sin(fc * c)
    return field / np.float32(np.sqrt(n_waves))


def _background(shape: tuple[int, int], stains: dict, rng: np.random.Generator) -> np.ndarray:
    """The (rows, cols, 3) float32 optical density of the plasma, slightly mottled."""
    mottle = 1 + 0.5 * _smooth_field(shape, rng)
    return mottle[..., None] * stains["plasma"]


def _expose(od: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optical density (rows, cols, 3) to an RGB uint8 image: light, gradient, blur, noise."""
    shape = od.shape[:2]
    light = np.array([240, 236, 231], np.float32) * np.exp(rng.normal(0, 0.025, 3)).astype(np.float32)
    r = np.linspace(-0.5, 0.5, shape[0], dtype=np.float32)[:, None]
    c = np.linspace(-0.5, 0.5, shape[1], dtype=np.float32)[None, :]
    gr, gc = (float(x) for x in rng.uniform(-0.1, 0.1, 2))
    vignette = float(rng.uniform(0, 0.15))
    cr, cc = (float(x) for x in rng.uniform(-0.2, 0.2, 2))
    gain = 1 + gr * r + gc * c - vignette * ((r - cr) ** 2 + (c - cc) ** 2)
    image = (gain[..., None] * light) * np.exp(-od)
    sigma = float(rng.uniform(0.5, 1.0))
    image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    image += np.float32(rng.uniform(1.5, 3.5)) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Which cells, and where


def _sample_cells(config: SimulateConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Categories (n,) str and radii (n,) float of cells whose areas add up to the density."""
    stage_p = np.array([config.stage_fractions.get(s, 0.0) for s in config.STAGES], dtype=float)
    p = np.concatenate([[1 - stage_p.sum()], stage_p]) * (1 - config.leukocyte_fraction)
    p = np.append(p, config.leukocyte_fraction)
    p = np.clip(p, 0, None) / p.sum()
    target = config.cell_density * config.image_rows * config.image_cols
    n = int(2 * target / (np.pi * config.rbc_radius**2)) + 8
    idx = rng.choice(len(CATEGORIES), size=n, p=p)
    cats = np.array(CATEGORIES, dtype=object)[idx]
    lo = np.array([_ENLARGEMENT[c][0] for c in cats])
    hi = np.array([_ENLARGEMENT[c][1] for c in cats])
    size = np.clip(np.exp(rng.normal(0, 0.08, n)), 0.8, 1.25)
    radii = config.rbc_radius * size * rng.uniform(lo, hi)
    m = max(1, int(np.searchsorted(np.cumsum(np.pi * radii**2), target)))
    return cats[:m], radii[:m]


def _place_cells(
    shape: tuple[int, int], cats: np.ndarray, radii: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, 2) float (row, col) and a (n,) bool of the cells that found a place.

    In random order, so that parasitised (larger) cells are not placed first and clumped
    together; about half the cells are put against a placed cell so that some touch or overlap
    a little, as in a thin smear's monolayer. The density is far below jamming, so few fail.
    """
    centres = np.full((len(cats), 2), np.nan)
    placed: list[int] = []
    size = np.array(shape, dtype=float)
    for i in rng.permutation(len(cats)):
        whole = cats[i] != RBC
        # Elliptical and irregular outlines reach up to 40 % past the radius.
        lo = np.full(2, 1.4 * radii[i] + 1) if whole else np.full(2, 0.25 * radii[i])
        hi = size - 1 - lo
        if (hi < lo).any():
            continue
        for _ in range(_MAX_TRIES):
            if placed and rng.random() < _CLUMP_P:
                j = placed[rng.integers(len(placed))]
                angle = rng.uniform(0, 2 * np.pi)
                dist = (radii[i] + radii[j]) * rng.uniform(_MIN_GAP, 1.02)
                c = centres[j] + dist * np.array([np.sin(angle), np.cos(angle)])
            else:
                c = rng.uniform(lo, hi)
            if (c < lo).any() or (c > hi).any():
                continue
            if placed:
                d = np.hypot(*(centres[placed] - c).T)
                if (d < _MIN_GAP * (radii[placed] + radii[i])).any():
                    continue
            centres[i] = c
            placed.append(i)
            break
    return centres, ~np.isnan(centres[:, 0])
