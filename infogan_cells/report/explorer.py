"""The cell explorer: a page where one picks a category, moves a slider per continuous code and
one for the noise seed, and watches the generated cell change, offline, from ``file://``.

Live: when onnxruntime-web is installed (``./setup.sh --dev``) the generator is exported to ONNX
and runs in the page (:mod:`infogan_cells.report.live`): smooth sliders, any noise seed, drawn on a
canvas. The lattice below is always written too, and shown when the live generator is not
available (the page says why).

The lattice: the trained generator renders images in
advance: for every category (of the first categorical code) x noise seed x grid point of the
continuous codes. With one or two continuous codes the grid is complete (``n_steps`` per code,
``n_steps ** 2`` points); with more, each code is swept alone while the others stay at 0
(``n_continuous * n_steps`` points), which keeps the lattice linear rather than exponential in
the number of codes. Further categorical codes, if any, take the values the noise seed draws.

Files, all under ``report/``::

    explorer.html          the page (controls written here, so it is readable without scripts)
    explorer.js            the static script (``report/assets/explorer.js``)
    explorer/index.js      the lattice's index, loaded with <script src> as a global
                           (``fetch`` is blocked on file:// pages)
    explorer/catKK.png     one sprite sheet per category, tiles in row-major order; tile
                           ``seed_index * n_points + point`` is at column ``t % cols``, row ``t // cols``
    explorer/live.js       the live page's script (``report/assets/explorer-live.js``)
    explorer/model.js, explorer/ort/   the ONNX generator and the runtime (live only)

The script shows a tile with CSS ``background-position`` on the sprite sheet.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infogan_cells.config import LatentSpec
from infogan_cells.errors import InputError
from infogan_cells.model.checkpoint import load_generator, resolve_device
from infogan_cells.model.latent import Latent, sample_latent_by_seed, to_input
from infogan_cells.preprocess.montage import tile
from infogan_cells.report.folder import code_meaning, read_analysis
from infogan_cells.report.html import esc, page
from infogan_cells.report.live import LIVE_SCRIPTS, find_runtime, write_live_files

log = logging.getLogger(__name__)

DATA_GLOBAL = "INFOGAN_EXPLORER"
MAX_TILES = 10_000  # 64x64 RGB: at most ~120 MB of pixels, a few MB per category as PNG


def lattice(n_continuous: int, n_steps: int, r: float) -> tuple[str, np.ndarray]:
    """The grid of continuous codes: ``("grid" | "axes", values (n_points, n_continuous))``.

    "grid": every combination, point ``sum(step_j * n_steps ** (n - 1 - j))``;
    "axes" (more than two codes): code ``j`` alone at step ``s`` is point ``j * n_steps + s``.
    """
    if n_steps < 2:
        raise InputError(f"explorer n_steps={n_steps}: need at least 2 steps per code")
    steps = np.linspace(-r, r, n_steps)
    if n_continuous <= 2:
        idx = list(itertools.product(range(n_steps), repeat=n_continuous))
        return "grid", np.array([[steps[i] for i in p] for p in idx], dtype=np.float32).reshape(
            len(idx), n_continuous
        )
    values = np.zeros((n_continuous * n_steps, n_continuous), dtype=np.float32)
    for j in range(n_continuous):
        values[j * n_steps : (j + 1) * n_steps, j] = steps
    return "axes", values


def to_rgb(images: torch.Tensor) -> np.ndarray:
    """Generator output (N, C, H, W) in [-1, 1] -> (N, H, W, 3) uint8 for display.

    One channel is shown grey, two as red and green, three as RGB, more by their first three.
    """
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    x = x.transpose(0, 2, 3, 1)
    c = x.shape[-1]
    if c == 1:
        return np.repeat(x, 3, axis=-1)
    if c == 2:
        return np.concatenate([x, np.zeros_like(x[..., :1])], axis=-1)
    return np.ascontiguousarray(x[..., :3])


def pack_sprite(tiles: np.ndarray, cols: int) -> np.ndarray:
    """Tiles (N, H, W, 3) -> one sheet (rows*H, cols*W, 3), row-major, black where no tile."""
    return tile(tiles, cols)


@torch.inference_mode()
def _render_category(
    G: torch.nn.Module,
    spec: LatentSpec,
    base: Latent,
    k: int,
    values: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """Images for category ``k``: every noise seed of ``base`` at every point of ``values``."""
    n_seeds, n_points = len(base), len(values)
    z = base.z.repeat_interleave(n_points, dim=0)
    cat = base.cat.repeat_interleave(n_points, dim=0).clone()
    if cat.shape[1]:
        cat[:, 0] = k
    cont = torch.from_numpy(values).repeat(n_seeds, 1)
    out = []
    for i in range(0, len(z), batch_size):
        latent = Latent(z[i : i + batch_size], cat[i : i + batch_size], cont[i : i + batch_size]).to(device)
        out.append(to_rgb(G(to_input(spec, latent))))
    return np.concatenate(out)


def render_explorer(
    run_dir: str | os.PathLike,
    analysis_dir: str | os.PathLike,
    report_dir: str | os.PathLike,
    *,
    n_noise_seeds: int = 4,
    n_steps: int = 7,
    device: str = "cpu",
    max_tiles: int = MAX_TILES,
    batch_size: int = 256,
    live: bool = True,
) -> Path:
    """Write ``explorer.html`` and ``explorer/`` into ``report_dir`` (not atomically: callers build in a
    temporary folder). Category names and code meanings come from ``analysis_dir`` when present.

    With ``live`` the generator is exported for the live page when onnxruntime-web and the ONNX
    exporter are installed; otherwise the page shows the lattice and says why."""
    if n_noise_seeds < 1:
        raise InputError(f"explorer n_noise_seeds={n_noise_seeds}: need at least 1")
    dev = resolve_device(device)
    G, spec, meta = load_generator(run_dir, device=dev)
    mode, values = lattice(spec.n_continuous, n_steps, spec.continuous_range)
    n_cat = spec.categorical[0] if spec.categorical else 1
    n_tiles = n_cat * n_noise_seeds * len(values)
    size = G.img_size
    log.info(
        "explorer lattice: %d categories x %d noise seeds x %d code points (%s) = %d images of %dx%d "
        "(%.1f MB of pixels before PNG compression)",
        n_cat,
        n_noise_seeds,
        len(values),
        mode,
        n_tiles,
        size,
        size,
        n_tiles * size * size * 3 / 1e6,
    )
    if n_tiles > max_tiles:
        raise InputError(
            f"explorer: the lattice would hold {n_tiles} images (limit {max_tiles}); lower "
            f"n_steps ({n_steps}) or n_noise_seeds ({n_noise_seeds})"
        )

    report_dir = Path(report_dir)
    data_dir = report_dir / "explorer"
    data_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(range(n_noise_seeds))
    base = sample_latent_by_seed(spec, seeds)
    per_category = n_noise_seeds * len(values)
    cols = max(1, math.ceil(math.sqrt(per_category)))
    analysis = read_analysis(analysis_dir) if Path(analysis_dir).is_dir() else None
    labels = {c.index: c.label for c in analysis.categories} if analysis else {}
    categories = []
    for k in range(n_cat):
        sheet = pack_sprite(_render_category(G, spec, base, k, values, dev, batch_size), cols)
        Image.fromarray(sheet).save(data_dir / f"cat{k:02d}.png", optimize=False)
        label = labels.get(k)
        categories.append(
            {
                "index": k,
                "label": label or "",
                "name": f"Category {k}" + (f" ({label})" if label else ""),
                "sprite": f"explorer/cat{k:02d}.png",
            }
        )
    codes = []
    for j in range(spec.n_continuous):
        feature, rho = code_meaning(analysis, j) if analysis else (None, None)
        codes.append({"index": j, "name": f"c{j}", "feature": feature, "rho": rho})
    data = {
        "tile": size,
        "cols": cols,
        "rows": math.ceil(per_category / cols),
        "mode": mode,
        "n_steps": n_steps,
        "n_points": len(values),
        "steps": [round(float(v), 4) for v in np.linspace(-1, 1, n_steps) * spec.continuous_range],
        "seeds": seeds,
        "codes": codes,
        "categories": categories,
        "channels": [str(n) for n in (meta.get("channel_names") or [])][: min(G.channels, 3)],
    }
    (data_dir / "index.js").write_text(f"window.{DATA_GLOBAL} = {json.dumps(data, indent=1)};\n")
    live_info, why_not = _write_live(G, spec, data_dir) if live else (None, "not requested")
    scripts = ["explorer/index.js", "explorer.js", *(LIVE_SCRIPTS if live_info else ())]
    html_path = report_dir / "explorer.html"
    html_path.write_text(
        page(
            "Cell explorer",
            _body(data, n_tiles, live_info, why_not),
            nav='<nav><a href="index.html">&larr; Overview</a></nav>',
            scripts=scripts,
        )
    )
    return html_path


def _write_live(G: torch.nn.Module, spec: LatentSpec, data_dir: Path) -> tuple[dict | None, str]:
    """The live explorer's files, or (None, why they could not be made)."""
    runtime = find_runtime()
    if runtime is None:
        why = "onnxruntime-web is not installed (./setup.sh --dev installs it)"
    else:
        try:
            info = write_live_files(G, spec, data_dir, runtime)
        except ImportError as err:
            why = f"the ONNX exporter is missing ({err.name}; pip install 'infogan-cells[onnx]')"
        except Exception as err:  # noqa: BLE001  (any export failure leaves the lattice, said on the page)
            why = f"the generator could not be exported to ONNX ({type(err).__name__}: {err})"
        else:
            from importlib import resources

            text = (resources.files("infogan_cells.report") / "assets" / "explorer-live.js").read_text()
            (data_dir / "live.js").write_text(text)
            return info, ""
    log.warning("explorer: no live generator: %s; the page shows the pictures rendered in advance", why)
    return None, why


def _body(data: dict, n_tiles: int, live: dict | None = None, why_not: str = "") -> str:
    centre = (data["n_steps"] - 1) // 2
    options = "".join(f'<option value="{c["index"]}">{esc(c["name"])}</option>' for c in data["categories"])
    sliders = []
    for c in data["codes"]:
        meaning = f" ≈ {c['feature']}" if c["feature"] else ""
        sliders.append(
            f'<div class="code" id="code-{c["index"]}-box"><label for="code-{c["index"]}">'
            f'Code {esc(c["name"] + meaning)} <span class="readout" id="code-{c["index"]}-value">'
            f'</span></label><input type="range" id="code-{c["index"]}" min="0" '
            f'max="{data["n_steps"] - 1}" step="1" value="{centre}"></div>'
        )
    strip = "".join(
        f'<button type="button" data-category="{c["index"]}" title="{esc(c["name"])}">'
        f'<div class="tile"></div>{c["index"]}</button>'
        for c in data["categories"]
    )
    axes = (
        '<p class="explain">This network has more than two continuous codes. To keep the number of '
        "pictures small, each slider moves its own code while the others are held at 0.</p>"
        if data["mode"] == "axes"
        else ""
    )
    shown = ("grey",) if len(data["channels"]) == 1 else ("red", "green", "blue")
    colours = ", ".join(f"{col} = {name}" for col, name in zip(shown, data["channels"], strict=False))
    channels = f'<p class="explain">Colours: {esc(colours)}.</p>' if colours else ""
    if live:
        note = '<p id="live-status" class="explain">The live generator needs JavaScript.</p>'
    else:
        note = (
            f'<p id="live-status" class="explain">The live generator is not in this report: {esc(why_not)}. '
            f"The pictures below were rendered in advance.</p>"
        )
    return f"""<p class="lead">Conjure new cells: pick a category, then move the sliders. Each continuous code
changes one aspect of the cell; the noise seed changes everything the codes do not control.</p>
{note}{channels}
{_live_block(data, live) if live else ""}
<div id="lattice">
<p class="explain">Every picture was generated in advance by the trained network ({n_tiles} pictures,
{len(data["categories"])} categories &times; {len(data["seeds"])} noise seeds &times; {data["n_points"]}
code settings); the page only chooses which one to show, so it works offline.</p>
{axes}
<div class="explorer">
<div id="view" class="view" role="img" aria-label="generated cell"></div>
<div class="controls">
<label for="category">Category</label>
<select id="category">{options}</select>
{"".join(sliders)}
<div class="code"><label for="seed">Noise seed <span class="readout" id="seed-value"></span></label>
<input type="range" id="seed" min="0" max="{len(data["seeds"]) - 1}" step="1" value="0"></div>
<p id="status" class="explain"></p>
</div>
</div>
<h2>The same settings in every category</h2>
<div class="strip" id="strip">{strip}</div>
</div>
<noscript><p class="missing">The explorer needs JavaScript.</p></noscript>"""


def _live_block(data: dict, live: dict) -> str:
    """The live explorer's controls (hidden until its script has started the generator)."""
    options = "".join(f'<option value="{c["index"]}">{esc(c["name"])}</option>' for c in data["categories"])
    r = live["range"]
    sliders = []
    for c in data["codes"]:
        meaning = f" ≈ {c['feature']}" if c["feature"] else ""
        j = c["index"]
        sliders.append(
            f'<div class="code"><label for="live-code-{j}">Code {esc(c["name"] + meaning)} '
            f'<span class="readout" id="live-code-{j}-value"></span></label>'
            f'<input type="range" id="live-code-{j}" min="{-r}" max="{r}" step="{r / 100:g}" '
            f'value="0"></div>'
        )
    size = live["img_size"]
    return f"""<div id="live" class="explorer" hidden>
<canvas id="live-view" class="view live" width="{size}" height="{size}" role="img"
aria-label="generated cell"></canvas>
<div class="controls">
<label for="live-category">Category</label>
<select id="live-category">{options}</select>
{"".join(sliders)}
<div class="code"><label for="live-seed">Noise seed</label>
<input type="number" id="live-seed" min="0" max="4294967295" step="1" value="0">
<button type="button" id="live-random">Random</button></div>
</div>
</div>"""


__all__ = ["lattice", "pack_sprite", "render_explorer", "to_rgb"]
