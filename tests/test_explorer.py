"""The cell explorer: the precomputed lattice, its sprite sheets, and the page in a browser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_report import make_analysis

from infogan_cells.config import LatentSpec
from infogan_cells.errors import InputError
from infogan_cells.model.checkpoint import save_network
from infogan_cells.model.latent import Latent, sample_latent_by_seed, to_input
from infogan_cells.model.networks import Discriminator, Generator
from infogan_cells.report import explorer
from infogan_cells.report.explorer import lattice, pack_sprite, to_rgb
from infogan_cells.report.pages import write_explorer, write_report


def make_run(
    path: Path, *, n_continuous: int = 2, channels: int = 3, img_size: int = 16, n_cat: int = 3
) -> Path:
    """A run folder with an untrained but strongly random generator (every code changes the image)."""
    spec = LatentSpec(z_dim=4, categorical=[n_cat], n_continuous=n_continuous, continuous_range=1.0)
    G = Generator(spec, img_size=img_size, channels=channels, width=8)
    D = Discriminator(spec, img_size=img_size, channels=channels, width=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in G.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    G.eval()
    save_network(path / "network-final.pt", G=G, D=D, meta={"channel_names": ["DAPI", "actin", "tubulin"]})
    return path


def read_index(report_dir: Path) -> dict:
    text = (report_dir / "explorer" / "index.js").read_text()
    prefix = f"window.{explorer.DATA_GLOBAL} = "
    assert text.startswith(prefix)
    return json.loads(text[len(prefix) :].rstrip().rstrip(";"))


def tile(report_dir: Path, data: dict, k: int, t: int) -> np.ndarray:
    sheet = np.asarray(Image.open(report_dir / "explorer" / f"cat{k:02d}.png").convert("RGB"))
    s = data["tile"]
    r, c = divmod(t, data["cols"])
    return sheet[r * s : (r + 1) * s, c * s : (c + 1) * s]


# --------------------------------------------------------------------------------------


def test_lattice_is_a_full_grid_up_to_two_codes() -> None:
    mode, values = lattice(2, 3, 2.0)
    assert mode == "grid" and values.shape == (9, 2)
    # point = step_0 * n_steps + step_1
    np.testing.assert_allclose(values[1 * 3 + 2], [0.0, 2.0])
    mode, values = lattice(0, 5, 1.0)
    assert mode == "grid" and values.shape == (1, 0)


def test_lattice_sweeps_each_code_alone_beyond_two() -> None:
    mode, values = lattice(4, 5, 1.0)
    assert mode == "axes" and values.shape == (20, 4)
    np.testing.assert_allclose(values[2 * 5 + 4], [0, 0, 1, 0])
    assert ((values != 0).sum(axis=1) <= 1).all()


def test_lattice_needs_two_steps() -> None:
    with pytest.raises(InputError, match="n_steps=1"):
        lattice(2, 1, 1.0)


def test_to_rgb_shows_one_two_and_many_channels() -> None:
    x = torch.linspace(-1, 1, 4 * 5 * 2 * 2).reshape(4, 5, 2, 2)
    assert to_rgb(x[:, :1]).shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(to_rgb(x[:, :1])[..., 0], to_rgb(x[:, :1])[..., 2])
    assert (to_rgb(x[:, :2])[..., 2] == 0).all()
    np.testing.assert_array_equal(to_rgb(x), to_rgb(x[:, :3]))
    assert to_rgb(torch.tensor([[[[-1.0, 1.0]]]])).tolist() == [[[[0, 0, 0], [255, 255, 255]]]]


def test_pack_sprite_is_row_major() -> None:
    tiles = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8)
    sheet = pack_sprite(tiles, 2)
    assert sheet.shape == (6, 4, 3)
    assert sheet[0, 2, 0] == 1 and sheet[2, 0, 0] == 2 and sheet[4, 0, 0] == 4 and sheet[4, 2, 0] == 0


def test_every_tile_is_the_generator_image_of_its_latent(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = make_analysis(tmp_path / "seed0")
    page = write_explorer(run, out, n_noise_seeds=2, n_steps=3, live=False)
    report_dir = out / "report"
    assert page == report_dir / "explorer.html"
    data = read_index(report_dir)
    assert data["n_points"] == 9 and data["mode"] == "grid"
    assert [c["label"] for c in data["categories"]] == ["ring", "trophozoite", "<b>RBC</b> & co"]
    assert data["codes"][0]["feature"] == "orientation"
    assert "Colours: red = DAPI, green = actin, blue = tubulin." in page.read_text()

    from infogan_cells.model.checkpoint import load_generator

    G, spec, _ = load_generator(run)
    _, values = lattice(2, 3, 1.0)
    for k, seed, point in [(0, 0, 0), (1, 1, 5), (2, 0, 8), (2, 1, 3)]:
        base = sample_latent_by_seed(spec, [seed])
        cat = base.cat.clone()
        cat[:, 0] = k
        latent = Latent(base.z, cat, torch.from_numpy(values[point : point + 1]))
        with torch.no_grad():
            expected = to_rgb(G(to_input(spec, latent)))[0]
        got = tile(report_dir, data, k, seed * data["n_points"] + point)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, (k, seed, point)


def test_tiles_differ_along_codes_seeds_and_categories(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "seed0"
    write_explorer(run, out, n_noise_seeds=2, n_steps=3, live=False)
    data = read_index(out / "report")
    t0 = tile(out / "report", data, 0, 4)
    for other in [
        tile(out / "report", data, 0, 5),
        tile(out / "report", data, 0, 13),
        tile(out / "report", data, 1, 4),
    ]:
        assert not np.array_equal(t0, other)


def test_more_than_two_codes_use_axes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_run(tmp_path / "run", n_continuous=3, channels=1)
    out = tmp_path / "seed0"
    with caplog.at_level("INFO", logger="infogan_cells.report.explorer"):
        write_explorer(run, out, n_noise_seeds=1, n_steps=5, live=False)
    data = read_index(out / "report")
    assert data["mode"] == "axes" and data["n_points"] == 15
    assert "3 categories x 1 noise seeds x 15 code points (axes) = 45 images of 16x16" in caplog.text
    text = (out / "report" / "explorer.html").read_text()
    assert "held at 0" in text and "Colours: grey = DAPI." in text


def test_the_lattice_is_bounded(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    with pytest.raises(InputError, match="would hold 108 images .limit 100.; lower n_steps"):
        write_explorer(run, tmp_path / "seed0", n_noise_seeds=4, n_steps=3, max_tiles=100, live=False)
    assert not (tmp_path / "seed0" / "report" / "explorer.html").exists()
    assert list((tmp_path / "seed0" / "report").iterdir()) == []  # no temporary folder left


def test_explorer_after_the_report_is_linked_from_it(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = make_analysis(tmp_path / "seed0")
    write_report(out)
    assert "explorer.html" not in (out / "report" / "index.html").read_text()
    write_explorer(run, out, n_noise_seeds=1, n_steps=2, live=False)
    assert 'href="explorer.html"' in (out / "report" / "index.html").read_text()
    # rewriting the report keeps it
    write_report(out)
    assert (out / "report" / "explorer" / "cat00.png").is_file()
    assert 'href="explorer.html"' in (out / "report" / "index.html").read_text()


def test_report_with_a_run_renders_the_explorer(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = make_analysis(tmp_path / "seed0")
    write_report(out, run_dir=run, n_noise_seeds=1, n_steps=2, live=False)
    assert read_index(out / "report")["n_points"] == 4
    assert 'href="explorer.html"' in (out / "report" / "index.html").read_text()


# --------------------------------------------------------------------------------------
# In a browser


@pytest.fixture(scope="module")
def browser():
    from browser import launch_or_skip

    b = launch_or_skip()
    yield b
    b.close()


STATE = """(() => {
  const v = document.getElementById('view');
  const s = getComputedStyle(v);
  return {tile: Number(v.dataset.tile), category: Number(v.dataset.category), image: s.backgroundImage,
          position: s.backgroundPosition, readout: document.getElementById('code-0-value').textContent};
})()"""


def _set(element_id: str, value: int, event: str = "input") -> str:
    return (
        f"(() => {{ const e = document.getElementById('{element_id}'); e.value = '{value}'; "
        f"e.dispatchEvent(new Event('{event}', {{bubbles: true}})); }})()"
    )


@pytest.mark.browser
def test_sliders_and_category_change_the_cell(tmp_path: Path, browser) -> None:
    run = make_run(tmp_path / "run")
    out = make_analysis(tmp_path / "seed0")
    write_report(out, run_dir=run, n_noise_seeds=2, n_steps=5, live=False)
    report_dir = out / "report"
    data = read_index(report_dir)
    page = browser.open(report_dir / "explorer.html")
    sizes = page.evaluate(
        "Promise.all(INFOGAN_EXPLORER.categories.map(c => new Promise(ok => {"
        "const i = new Image(); i.onload = () => ok(i.naturalWidth); i.onerror = () => ok(0);"
        " i.src = c.sprite; })))"
    )
    assert all(w == data["cols"] * data["tile"] for w in sizes)

    before = page.evaluate(STATE)
    assert before["tile"] == 2 * 5 + 2 and before["category"] == 0  # seed 0, both codes at the centre
    assert "cat00.png" in before["image"] and before["readout"] == "= 0.00"
    page.evaluate(_set("code-0", 4))
    moved = page.evaluate(STATE)
    assert moved["tile"] == 4 * 5 + 2 and moved["readout"] == "= 1.00"
    assert moved["position"] != before["position"]
    scale = 256 / data["tile"]
    r, c = divmod(moved["tile"], data["cols"])
    assert moved["position"] == f"{-c * data['tile'] * scale:g}px {-r * data['tile'] * scale:g}px"
    assert not np.array_equal(
        tile(report_dir, data, 0, before["tile"]), tile(report_dir, data, 0, moved["tile"])
    )

    page.evaluate(_set("seed", 1))
    assert page.evaluate(STATE)["tile"] == 25 + 22

    page.evaluate(_set("category", 2, "change"))
    other = page.evaluate(STATE)
    assert other["category"] == 2 and "cat02.png" in other["image"] and other["tile"] == 47
    assert not np.array_equal(tile(report_dir, data, 0, 47), tile(report_dir, data, 2, 47))

    page.evaluate("document.querySelector('#strip button[data-category=\"1\"]').click()")
    assert page.evaluate(STATE)["category"] == 1
    assert page.errors() == []
    page.close()


@pytest.mark.browser
def test_with_three_codes_a_slider_moves_its_code_alone(tmp_path: Path, browser) -> None:
    run = make_run(tmp_path / "run", n_continuous=3, channels=1)
    out = tmp_path / "seed0"
    write_explorer(run, out, n_noise_seeds=1, n_steps=3, live=False)
    page = browser.open(out / "report" / "explorer.html")
    assert page.evaluate(STATE)["tile"] == 0 * 3 + 1
    page.evaluate(_set("code-2", 0))
    assert page.evaluate(STATE)["tile"] == 2 * 3 + 0
    held = page.evaluate(
        "[0, 1, 2].map(j => document.getElementById(`code-${j}-box`).classList.contains('held'))"
    )
    assert held == [True, True, False]
    assert page.evaluate(STATE)["readout"] == "= 0.00"
    assert page.errors() == []
    page.close()


# --------------------------------------------------------------------------------------
# The live explorer: the generator exported to ONNX and run in the page


def _generator_rgb(run: Path, x: list[float]) -> np.ndarray:
    from infogan_cells.model.checkpoint import load_generator

    G, _, _ = load_generator(run)
    with torch.no_grad():
        return to_rgb(G(torch.tensor([x], dtype=torch.float32)))[0]


def test_the_onnx_export_computes_the_generator(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="the ONNX exporter is in the onnx extra")
    from onnx.reference import ReferenceEvaluator

    from infogan_cells.model.checkpoint import load_generator
    from infogan_cells.report.live import export_generator

    G, spec, _ = load_generator(make_run(tmp_path / "run"))
    path = export_generator(G, tmp_path / "G.onnx")
    base = sample_latent_by_seed(spec, [0, 1, 2])
    x = to_input(spec, base)
    (got,) = ReferenceEvaluator(str(path)).run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = G(x).numpy()
    assert got.shape == expected.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_without_the_runtime_the_page_says_so_and_keeps_the_lattice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ORT_WEB_DIR", str(tmp_path / "nowhere"))
    run = make_run(tmp_path / "run")
    page = write_explorer(run, tmp_path / "seed0", n_noise_seeds=1, n_steps=2)
    text = page.read_text()
    assert "The live generator is not in this report: onnxruntime-web is not installed" in text
    assert 'id="live"' not in text and "ort.wasm.min.js" not in text
    assert not (tmp_path / "seed0" / "report" / "explorer" / "model.js").exists()
    assert (tmp_path / "seed0" / "report" / "explorer" / "cat00.png").is_file()


LIVE_STATE = """(async () => {
  await window.infoganLive.idle();
  const c = document.getElementById('live-view');
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return {renders: window.infoganLive.renders, input: window.infoganLive.lastInput, pixels: Array.from(px),
          live: !document.getElementById('live').hidden, lattice: !document.getElementById('lattice').hidden,
          readout: document.getElementById('live-code-0-value').textContent,
          status: document.getElementById('live-status').textContent};
})()"""


def _live_rgb(state: dict, size: int) -> np.ndarray:
    return np.array(state["pixels"], np.uint8).reshape(size, size, 4)[..., :3]


def _wait_live(page) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = page.evaluate("window.infoganLive && [window.infoganLive.ready, window.infoganLive.error]")
        if state and (state[0] or state[1]):
            assert state[1] is None, state[1]
            return
        time.sleep(0.1)
    raise AssertionError("the live generator did not start in 60 s")


def _needs_live_runtime() -> None:
    """Skip unless the page's ONNX runtime and the ONNX exporter are installed."""
    from infogan_cells.report.live import find_runtime

    if find_runtime() is None:
        pytest.skip("onnxruntime-web not installed (./setup.sh --dev installs it)")
    pytest.importorskip("onnxscript", reason="the ONNX exporter is in the onnx extra")


@pytest.mark.browser
def test_the_live_page_runs_the_generator(tmp_path: Path, browser) -> None:
    _needs_live_runtime()
    run = make_run(tmp_path / "run")
    out = make_analysis(tmp_path / "seed0")
    write_report(out, run_dir=run, n_noise_seeds=1, n_steps=2)
    page = browser.open(out / "report" / "explorer.html")
    _wait_live(page)
    first = page.evaluate(LIVE_STATE)
    assert first["live"] and not first["lattice"] and "runs in this page" in first["status"]
    assert first["renders"] >= 1 and first["readout"] == "= 0.00"
    # the input the page drew: z (4 values), one-hot category 0 of 3, both codes at 0
    assert first["input"][4:] == [1, 0, 0, 0, 0]
    before = _live_rgb(first, 16)
    assert np.abs(before.astype(int) - _generator_rgb(run, first["input"])).max() <= 2

    # a smooth slider: any value in [-r, r], not only the lattice's steps
    page.evaluate(_set("live-code-0", 0.73))
    moved = page.evaluate(LIVE_STATE)
    assert moved["renders"] > first["renders"] and moved["readout"] == "= 0.73"
    assert moved["input"][:4] == first["input"][:4] and moved["input"][7] == pytest.approx(0.73)
    after = _live_rgb(moved, 16)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 2  # the picture changed ...
    assert np.abs(after.astype(int) - _generator_rgb(run, moved["input"])).max() <= 2  # ... to G's own

    page.evaluate(_set("live-category", 2, "change"))
    page.evaluate(_set("live-seed", 123456))
    other = page.evaluate(LIVE_STATE)
    assert other["input"][4:7] == [0, 0, 1] and other["input"][:4] != first["input"][:4]
    assert np.abs(_live_rgb(other, 16).astype(int) - _generator_rgb(run, other["input"])).max() <= 2
    # a seed is reproducible: back to seed 0 gives the first noise again
    page.evaluate(_set("live-seed", 0))
    assert page.evaluate(LIVE_STATE)["input"][:4] == first["input"][:4]
    assert page.errors() == []
    page.close()


@pytest.mark.browser
def test_when_the_runtime_fails_in_the_page_the_lattice_shows(tmp_path: Path, browser) -> None:
    _needs_live_runtime()
    run = make_run(tmp_path / "run")
    page_path = write_explorer(run, tmp_path / "seed0", n_noise_seeds=1, n_steps=2)
    (tmp_path / "seed0" / "report" / "explorer" / "ort" / "wasm.js").unlink()  # a report copied in part
    page = browser.open(page_path)
    state = page.evaluate(
        "({error: window.infoganLive.error, live: !document.getElementById('live').hidden,"
        " lattice: !document.getElementById('lattice').hidden,"
        " status: document.getElementById('live-status').textContent,"
        " tile: document.getElementById('view').dataset.tile})"
    )
    assert state["error"] == "the runtime's WebAssembly did not load"
    assert not state["live"] and state["lattice"] and state["tile"] == "0"
    assert "could not start (the runtime's WebAssembly did not load)" in state["status"]
    assert [e for e in page.errors() if "wasm.js" not in e] == []  # only the missing file itself
    page.close()
