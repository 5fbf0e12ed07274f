"""Tests of the smear simulator: determinism, the BBBC041 format, the stage mix, and that the
stages look different enough for a generative model to find them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infogan_cells.config import SimulateConfig
from infogan_cells.data.simulate import CATEGORIES, RBC, render_smear, simulate_smears
from infogan_cells.errors import ConfigError

SMALL = {"n_images": 2, "image_rows": 256, "image_cols": 256}
STAGES = SimulateConfig.STAGES


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _boxes(entries: list[dict]) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(image index, category, (min_row, min_col, max_row, max_col)) for every object."""
    out = []
    for k, entry in enumerate(entries):
        for obj in entry["objects"]:
            lo, hi = obj["bounding_box"]["minimum"], obj["bounding_box"]["maximum"]
            out.append((k, obj["category"], (lo["r"], lo["c"], hi["r"], hi["c"])))
    return out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The default config (12 images of 480 x 640), generated once for the module."""
    out = tmp_path_factory.mktemp("smears")
    path = simulate_smears(out, SimulateConfig())
    assert path == out / "annotations.json"
    return out, json.loads(path.read_text())


@pytest.fixture(scope="module")
def box_stats(default_run) -> dict[str, np.ndarray]:
    """Per category, one row per box: 2nd percentile of the red channel (relative to the
    image's background), fraction of dark pixels (red < half the background), box area."""
    out_dir, entries = default_run
    stats: dict[str, list] = {c: [] for c in CATEGORIES}
    images = [
        np.asarray(Image.open(out_dir / e["image"]["pathname"].lstrip("/")), dtype=float) for e in entries
    ]
    backgrounds = [np.percentile(im[..., 0], 99) for im in images]
    for k, cat, (r0, c0, r1, c1) in _boxes(entries):
        # Giemsa-stained parasite and nuclei absorb red light; a pink erythrocyte hardly does.
        red = (images[k][r0:r1, c0:c1, 0] / backgrounds[k]).ravel()
        p2 = np.partition(red, red.size // 50)[red.size // 50]
        stats[cat].append((p2, (red < 0.5).mean(), (r1 - r0) * (c1 - c0)))
    return {c: np.array(v) for c, v in stats.items()}


# --------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    simulate_smears(tmp_path / "a", SimulateConfig(**SMALL))
    simulate_smears(tmp_path / "b", SimulateConfig(**SMALL))
    simulate_smears(tmp_path / "c", SimulateConfig(**SMALL, seed=1))
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert sorted(a) == ["annotations.json", "images/smear_0000.png", "images/smear_0001.png"]
    assert a == b
    assert sorted(c) == sorted(a)
    assert all(a[name] != c[name] for name in a)


def test_image_k_does_not_depend_on_the_number_of_images(tmp_path):
    one, three = (
        json.loads(simulate_smears(tmp_path / name, SimulateConfig(**{**SMALL, "n_images": n})).read_text())
        for name, n in (("one", 1), ("three", 3))
    )
    assert one[0] == three[0]
    name = "images/smear_0000.png"
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    assert one[0] != three[1]


def test_render_smear_is_a_function_of_its_generator():
    config = SimulateConfig(image_rows=96, image_cols=128, rbc_radius=8)
    image, objects = render_smear(config, np.random.default_rng(5))
    again, objects_again = render_smear(config, np.random.default_rng(5))
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, again)
    assert objects == objects_again and objects == sorted(objects, key=lambda o: o[1])


# --------------------------------------------------------------------------------------
# Format


def test_annotations_are_valid_bbbc041_with_true_checksums_and_boxes_inside(default_run):
    out_dir, entries = default_run
    config = SimulateConfig()
    assert len(entries) == config.n_images
    for k, entry in enumerate(entries):
        assert set(entry) == {"image", "objects"}
        assert entry["image"]["pathname"] == f"/images/smear_{k:04d}.png"
        data = (out_dir / "images" / f"smear_{k:04d}.png").read_bytes()
        assert entry["image"]["checksum"] == hashlib.md5(data).hexdigest()
        assert entry["image"]["shape"] == {"r": config.image_rows, "c": config.image_cols, "channels": 3}
        with Image.open(out_dir / "images" / f"smear_{k:04d}.png") as im:
            assert im.mode == "RGB" and im.size == (config.image_cols, config.image_rows)
        assert len(entry["objects"]) > 50
        for obj in entry["objects"]:
            assert set(obj) == {"bounding_box", "category"}
            assert set(obj["bounding_box"]) == {"minimum", "maximum"}
    for _, cat, (r0, c0, r1, c1) in _boxes(entries):
        assert cat in CATEGORIES
        assert all(type(v) is int for v in (r0, c0, r1, c1))
        assert 0 <= r0 < r1 <= config.image_rows and 0 <= c0 < c1 <= config.image_cols
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in out_dir.iterdir()) == ["annotations.json", "images"]
    assert len(list((out_dir / "images").iterdir())) == config.n_images


def test_only_uninfected_cells_are_cut_by_the_border(default_run):
    _, entries = default_run
    rows, cols = SimulateConfig().image_rows, SimulateConfig().image_cols
    on_border = {
        cat for _, cat, (r0, c0, r1, c1) in _boxes(entries) if r0 == 0 or c0 == 0 or r1 == rows or c1 == cols
    }
    assert on_border == {RBC}


def test_boxes_are_tight_around_the_cells(tmp_path):
    # On a white field every box holds stained pixels on its first and last rows and columns.
    config = SimulateConfig(**SMALL)
    image, objects = render_smear(config, np.random.default_rng(0))
    stained = image.astype(float).min(-1) < np.percentile(image.min(-1), 99) - 25
    for _, (r0, c0, r1, c1) in objects:
        box = stained[r0:r1, c0:c1]
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()


# --------------------------------------------------------------------------------------
# Stage mix


def test_every_category_is_present_with_the_default_config(default_run):
    _, entries = default_run
    assert {cat for _, cat, _ in _boxes(entries)} == set(CATEGORIES)


def test_counts_follow_the_default_fractions(default_run):
    _, entries = default_run
    config = SimulateConfig()
    cats = [cat for _, cat, _ in _boxes(entries)]
    n_red = sum(c != "leukocyte" for c in cats)
    assert cats.count("leukocyte") / len(cats) == pytest.approx(config.leukocyte_fraction, abs=0.01)
    for stage, frac in config.stage_fractions.items():
        assert cats.count(stage) / n_red == pytest.approx(frac, abs=0.35 * frac)
    # Imbalanced as in real smears: most cells uninfected, the later stages rarer.
    assert cats.count(RBC) / n_red > 0.7


def test_counts_follow_configured_fractions(tmp_path):
    config = SimulateConfig(
        **{**SMALL, "n_images": 3}, stage_fractions={"schizont": 0.5}, leukocyte_fraction=0.0
    )
    cats = [cat for _, cat, _ in _boxes(json.loads(simulate_smears(tmp_path, config).read_text()))]
    assert set(cats) == {RBC, "schizont"}
    assert cats.count("schizont") / len(cats) == pytest.approx(0.5, abs=0.15)


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        ({"merozoite": 0.1}, r"stage_fractions\.merozoite': unknown stage"),
        ({"ring": 0.6, "schizont": 0.6}, "add up to more than 1"),
        ({"ring": -0.1}, r"stage_fractions\.ring': expected a number >= 0"),
    ],
)
def test_bad_stage_fractions_are_refused(tmp_path, fractions, match):
    with pytest.raises(ConfigError, match=match):
        simulate_smears(tmp_path, SimulateConfig(stage_fractions=fractions))
    assert not (tmp_path / "annotations.json").exists()


# --------------------------------------------------------------------------------------
# The stages look different


def test_every_parasitised_cell_is_darker_than_most_uninfected_cells(box_stats):
    # Per box, not just on average: 90 % of each stage's boxes hold a pixel darker in red
    # than the darkest pixels of 90 % of uninfected cells' boxes.
    rbc_q10 = np.percentile(box_stats[RBC][:, 0], 10)
    for cat in (*STAGES, "leukocyte"):
        assert np.percentile(box_stats[cat][:, 0], 90) < rbc_q10, cat


def test_the_parasite_fills_more_of_the_cell_as_it_matures(box_stats):
    dark = [np.median(box_stats[cat][:, 1]) for cat in (RBC, *STAGES)]
    assert dark == sorted(dark) and dark[0] < 0.01 and dark[-1] > 0.3


def test_gametocytes_and_leukocytes_are_larger_than_red_blood_cells(box_stats):
    rbc_area = np.median(box_stats[RBC][:, 2])
    assert np.median(box_stats["gametocyte"][:, 2]) > 1.5 * rbc_area
    assert np.median(box_stats["leukocyte"][:, 2]) > 2.5 * rbc_area
    assert np.median(box_stats["ring"][:, 2]) < 1.3 * rbc_area
