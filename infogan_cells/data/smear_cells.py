"""Drawing one simulated cell (red blood cell, parasite stages, leukocyte) or platelets into a
smear's optical-density image, in place."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RBC = "red blood cell"
LEUKOCYTE = "leukocyte"


def _spots(
    dr: np.ndarray, dc: np.ndarray, pos: np.ndarray, sigma: np.ndarray | float, amp: np.ndarray | float = 1.0
) -> np.ndarray:
    """Sum of Gaussian spots at ``pos`` (k, 2) (row, col offsets) on the patch grid: (h, w) float32."""
    if len(pos) == 0:
        return np.zeros(np.broadcast_shapes(dr.shape, dc.shape), np.float32)
    sigma = np.broadcast_to(np.asarray(sigma, np.float32), (len(pos),))[:, None, None]
    amp = np.broadcast_to(np.asarray(amp, np.float32), (len(pos),))[:, None, None]
    d2 = (dr[None] - pos[:, :1, None]) ** 2 + (dc[None] - pos[:, 1:, None]) ** 2
    return (amp * np.exp(-d2 / (2 * sigma**2))).sum(0).astype(np.float32)


def _blob(
    dr: np.ndarray,
    dc: np.ndarray,
    radius: float,
    rng: np.random.Generator,
    *,
    centre: tuple[float, float] = (0.0, 0.0),
    ecc: float = 0.0,
    wobble: float = 0.0,
    harmonics: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """A soft irregular ellipse: (alpha, rho), both (h, w) float32.

    ``alpha`` is 1 inside and 0 outside with a one-pixel ramp; ``rho`` is the normalised
    distance from the centre (1 on the outline). ``ecc`` stretches one axis by 1 + ecc and
    shrinks the other by 1 - ecc; ``wobble`` is the amplitude of the random outline harmonics.
    """
    angle = rng.uniform(0, np.pi)
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    y, x = dr - np.float32(centre[0]), dc - np.float32(centre[1])
    u = (y * ca + x * sa) / (1 + ecc)
    v = (-y * sa + x * ca) / (1 - ecc)
    d = np.hypot(u, v)
    outline = np.ones_like(d)
    if wobble > 0:
        # cos(k phi + p) = Re(e^{ip} z^k) with z = e^{i phi}: powers instead of a cosine per harmonic.
        z = (u + 1j * v) / np.maximum(d, np.float32(1e-6))
        zk = z
        amps = wobble * rng.uniform(0.3, 1.0, harmonics) / np.arange(1, harmonics + 1) ** 0.5
        for a, p in zip(amps, rng.uniform(0, 2 * np.pi, harmonics), strict=True):
            zk = zk * z
            outline += (complex(a * np.cos(p), a * np.sin(p)) * zk).real
    outline *= np.float32(radius)
    alpha = np.clip(outline - d + 0.5, 0, 1)
    return alpha.astype(np.float32), (d / outline).astype(np.float32)


def _in_disk(rng: np.random.Generator, n: int, radius: float, centre=(0.0, 0.0)) -> np.ndarray:
    """``n`` points (n, 2) uniform in a disk."""
    r = radius * np.sqrt(rng.uniform(0, 1, n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([centre[0] + r * np.sin(t), centre[1] + r * np.cos(t)], axis=1)


def draw_cell(
    od: np.ndarray, cat: str, radius: float, centre: np.ndarray, stains: dict, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """Add one cell's optical density into ``od`` (in place); return its bbox (None if unseen)."""
    reach = int(np.ceil(1.45 * radius)) + 2
    r0, c0 = (max(0, int(np.floor(x)) - reach) for x in centre)
    r1 = min(od.shape[0], int(np.floor(centre[0])) + reach + 1)
    c1 = min(od.shape[1], int(np.floor(centre[1])) + reach + 1)
    dr = (np.arange(r0, r1, dtype=np.float32) - centre[0])[:, None]
    dc = (np.arange(c0, c1, dtype=np.float32) - centre[1])[None, :]
    if cat == LEUKOCYTE:
        alpha, layers = _leukocyte(dr, dc, radius, stains, rng)
    else:
        alpha, layers = _erythrocyte(dr, dc, radius, cat, stains, rng)
    patch = od[r0:r1, c0:c1]
    for density, stain in layers:
        patch += density[..., None] * stain
    rows = np.flatnonzero((alpha > 0.5).any(1))
    cols = np.flatnonzero((alpha > 0.5).any(0))
    if rows.size == 0:
        return None
    return (r0 + int(rows[0]), c0 + int(cols[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[-1]) + 1)


def _erythrocyte(dr, dc, radius, stage, stains, rng):
    """A red blood cell, uninfected (``stage`` = RBC) or parasitised; (alpha, [(density, stain)])."""
    irregular = rng.random() < 0.15
    ecc = rng.uniform(0, 0.05) if stage == "gametocyte" else rng.uniform(0, 0.12)
    wobble = rng.uniform(0.05, 0.09) if irregular else rng.uniform(0.0, 0.03)
    alpha, rho = _blob(dr, dc, radius, rng, ecc=ecc, wobble=wobble)
    # Biconcave disc: a thinner centre (the pallor) and a slightly thicker rim.
    pallor_depth = {
        RBC: (0.35, 0.7),
        "ring": (0.3, 0.65),
        "trophozoite": (0.2, 0.45),
        "schizont": (0.1, 0.3),
        "gametocyte": (0.0, 0.15),
    }[stage]
    offset = _in_disk(rng, 1, 0.15 * radius)[0]
    d_pallor = np.hypot(dr - offset[0], dc - offset[1]) / (radius * rng.uniform(0.4, 0.55))
    rim = np.exp(-(((rho - 0.88) / 0.12) ** 2))
    thickness = 1 - rng.uniform(*pallor_depth) * np.exp(-(d_pallor**2)) + 0.15 * rim
    layers = [(alpha * thickness * rng.uniform(0.85, 1.15), stains["rbc"])]
    if stage != RBC:
        layers += [
            (alpha * density, stains[name]) for density, name in _PARASITES[stage](dr, dc, radius, rng)
        ]
    return alpha, layers


def _ring(dr, dc, radius, rng):
    ring_r = radius * rng.uniform(0.25, 0.4)
    centre = _in_disk(rng, 1, max(0.0, 0.55 * radius - ring_r))[0]
    _, rho = _blob(dr, dc, ring_r, rng, centre=tuple(centre), ecc=rng.uniform(0, 0.2), wobble=0.1)
    phi = np.arctan2(dr - np.float32(centre[0]), dc - np.float32(centre[1]))
    dot_angle = rng.uniform(0, 2 * np.pi)
    # Signet ring: thickest opposite the chromatin dot, thinnest beside it.
    width = max(1.0, 0.075 * radius) * (1 + 0.6 * np.cos(phi - dot_angle - np.pi))
    ring = np.clip(width / 2 - np.abs(rho - 1) * ring_r + 0.5, 0, 1)
    n_dots = 2 if rng.random() < 0.2 else 1
    angles = dot_angle + np.array([0.0, rng.uniform(0.5, 1.2)])[:n_dots]
    dots = centre + ring_r * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    chromatin = _spots(dr, dc, dots, max(0.9, 0.085 * radius), 1.1)
    return [(1.1 * ring, "cytoplasm"), (chromatin, "chromatin")]


def _trophozoite(dr, dc, radius, rng):
    size = radius * rng.uniform(0.42, 0.58)
    centre = _in_disk(rng, 1, 0.25 * radius)[0]
    body, _ = _blob(dr, dc, size, rng, centre=centre, ecc=rng.uniform(0, 0.25), wobble=0.35, harmonics=5)
    vacuole = _spots(dr, dc, _in_disk(rng, 1, 0.4 * size, centre), 0.3 * size, rng.uniform(0.4, 0.7))
    n_chromatin = rng.integers(1, 3)
    chromatin = _spots(dr, dc, _in_disk(rng, n_chromatin, 0.6 * size, centre), max(1.0, 0.1 * radius), 1.0)
    grains = _in_disk(rng, rng.integers(1, 5), 0.7 * size, centre)
    pigment = _spots(dr, dc, grains, max(0.6, 0.04 * radius), 0.7)
    return [
        (0.95 * body * (1 - vacuole), "cytoplasm"),
        (chromatin, "chromatin"),
        (body * pigment, "haemozoin"),
    ]


def _schizont(dr, dc, radius, rng):
    size = radius * rng.uniform(0.68, 0.8)
    centre = _in_disk(rng, 1, 0.1 * radius)[0]
    body, _ = _blob(dr, dc, size, rng, centre=centre, ecc=rng.uniform(0, 0.1), wobble=0.08)
    merozoites = _in_disk(rng, rng.integers(10, 21), 0.82 * size, centre)
    chromatin = _spots(dr, dc, merozoites, max(0.8, 0.065 * radius), 1.2)
    clump = _in_disk(rng, 1, 0.25 * size, centre)[0]
    granules = _in_disk(rng, rng.integers(6, 15), 0.22 * size, clump)
    pigment = _spots(dr, dc, granules, max(0.7, 0.05 * radius), 1.0)
    return [(0.55 * body, "cytoplasm"), (chromatin, "chromatin"), (pigment, "haemozoin")]


def _gametocyte(dr, dc, radius, rng):
    size = radius * rng.uniform(0.85, 0.93)
    body, _ = _blob(dr, dc, size, rng, wobble=0.03)
    mass = _spots(dr, dc, _in_disk(rng, 1, 0.4 * size), 0.2 * radius, 0.45)
    granules = _in_disk(rng, rng.integers(15, 36), 0.88 * size)
    pigment = _spots(dr, dc, granules, max(0.6, 0.04 * radius), 0.9)
    return [(0.95 * body, "cytoplasm"), (body * mass, "chromatin"), (body * pigment, "haemozoin")]


_PARASITES = {"ring": _ring, "trophozoite": _trophozoite, "schizont": _schizont, "gametocyte": _gametocyte}


def _leukocyte(dr, dc, radius, stains, rng):
    """A neutrophil-like leukocyte: pale granular cytoplasm, 2-5 dark purple lobes joined by strands."""
    alpha, _ = _blob(dr, dc, radius, rng, ecc=rng.uniform(0, 0.08), wobble=0.03)
    grain = ndimage.gaussian_filter(rng.random(alpha.shape).astype(np.float32), 0.8)
    cytoplasm = alpha * (1 + 2 * (grain - grain.mean()))
    n_lobes = rng.integers(2, 6)
    # Lobes along an arc bent around a point off the cell's centre.
    bend = _in_disk(rng, 1, 0.15 * radius)[0]
    arc_r = radius * rng.uniform(0.4, 0.55)
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.linspace(0, rng.uniform(2.0, 3.6) * (n_lobes - 1) / 4, n_lobes)
    lobe_pos = bend + arc_r * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    lobe_r = radius * rng.uniform(0.24, 0.3, n_lobes) * (1.2 if n_lobes == 2 else 1.0)
    nucleus = np.zeros_like(alpha)
    for pos, r in zip(lobe_pos, lobe_r, strict=True):
        lobe, _ = _blob(dr, dc, r, rng, centre=tuple(pos), ecc=rng.uniform(0, 0.2), wobble=0.06)
        nucleus = np.maximum(nucleus, lobe)
    t = np.linspace(0, 1, 6)[1:-1, None]
    strands = np.concatenate([(1 - t) * a + t * b for a, b in zip(lobe_pos[:-1], lobe_pos[1:], strict=True)])
    nucleus = np.maximum(nucleus, np.clip(_spots(dr, dc, strands, max(0.8, 0.05 * radius), 1.5), 0, 1))
    clumps = ndimage.gaussian_filter(rng.random(alpha.shape).astype(np.float32), 1.5)
    nucleus *= alpha * (0.85 + 1.5 * (clumps - clumps.mean()))
    return alpha, [(cytoplasm, stains["wbc_cytoplasm"]), (nucleus, stains["nucleus"])]


def draw_platelets(od, centres, radii, rbc_radius, stains, rng) -> None:
    """A few small purple platelets in the plasma, never on a cell (so no box holds one)."""
    rows, cols = od.shape[:2]
    for _ in range(rng.integers(0, 3 + rows * cols // 40000)):
        size = rbc_radius * rng.uniform(0.1, 0.2)
        pos = rng.uniform([0, 0], [rows - 1, cols - 1])
        if len(centres) and (np.hypot(*(centres - pos).T) < 1.3 * radii + size + 3).any():
            continue
        reach = int(np.ceil(3 * size)) + 2
        r0, c0 = (max(0, int(x) - reach) for x in pos)
        r1, c1 = min(rows, int(pos[0]) + reach + 1), min(cols, int(pos[1]) + reach + 1)
        dr = (np.arange(r0, r1, dtype=np.float32) - pos[0])[:, None]
        dc = (np.arange(c0, c1, dtype=np.float32) - pos[1])[None, :]
        bits = _in_disk(rng, rng.integers(2, 6), size)
        od[r0:r1, c0:c1] += _spots(dr, dc, bits, 0.6 * size, 0.8)[..., None] * stains["platelet"]
