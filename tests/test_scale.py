"""Cell scale kept: each crop's scale and box size, the fixed window, the pixel size carried into
the crop store and the synthetic TIFF stacks, which bioio reads as OME-TIFF."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from skimage.draw import disk

from infogan_cells.config import CropConfig, InputConfig, load_config
from infogan_cells.data.store import read_crop_store
from infogan_cells.errors import ConfigError, InputError
from infogan_cells.preprocess.crop import crop
from infogan_cells.preprocess.windows import crop_windows
from infogan_cells.synthesis.gather import crop_pixel_size
from infogan_cells.synthesis.tiff import StackPlan, TiffStackWriter
from infogan_cells.synthesis.writers import Batch

BACKGROUND = 220
RADII = (8, 16)


def _smear(root: Path) -> Path:
    """One 120x160 smear with a small and a large dark disk, as a CSV of boxes."""
    image = np.full((120, 160, 3), BACKGROUND, np.uint8)
    rows = ["image,min_row,min_col,max_row,max_col,label"]
    for (r, c), radius in zip(((40, 40), (70, 110)), RADII, strict=True):
        rr, cc = disk((r, c), radius, shape=image.shape[:2])
        image[rr, cc] = (90, 40, 120)
        rows.append(f"s.png,{r - radius},{c - radius},{r + radius + 1},{c + radius + 1},r{radius}")
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "s.png")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"


def _dark_area(crops: np.ndarray) -> np.ndarray:
    return (crops[..., 0] < (BACKGROUND + 90) / 2).sum(axis=(1, 2))


def test_crops_record_their_scale_and_box_size(tmp_path):
    path = _smear(tmp_path / "in")
    crop(path, tmp_path / "crops.h5", InputConfig(path=str(path)), CropConfig(size=32, margin=0.25))
    store = read_crop_store(tmp_path / "crops.h5")
    obs = store.obs
    assert obs["box_height"].tolist() == [2 * r + 1 for r in RADII] == obs["box_width"].tolist()
    # each window is the box's side x 1.5, so each crop has its own scale ...
    np.testing.assert_allclose(obs["scale"], np.round(np.array([17, 33]) * 1.5) / 32)
    # ... and both cells fill their crops alike: the size is gone from the pixels
    small, large = _dark_area(store.images)
    assert abs(small - large) < 0.15 * large
    assert store.summary["window_px"] is None and store.summary["pixel_size_um"] is None


def test_a_fixed_window_keeps_absolute_size_and_the_pixel_size(tmp_path):
    path = _smear(tmp_path / "in")
    cfg = CropConfig(size=32, window_px=48, pixel_size_um=0.25, qc_size_ratio=10)
    crop(path, tmp_path / "crops.h5", InputConfig(path=str(path)), cfg)
    store = read_crop_store(tmp_path / "crops.h5")
    assert store.obs["scale"].tolist() == [1.5, 1.5]
    small, large = _dark_area(store.images)
    # areas scale with the radius squared (16 / 8) ** 2 = 4, up to the pixels on the rim
    assert 3.2 < large / small < 4.8
    assert store.summary["window_px"] == 48 and store.summary["pixel_size_um"] == 0.25
    assert store.summary["crop_pixel_size_um"] == pytest.approx(0.375)
    # the physical size of the large cell: its diameter in crop pixels x crop pixel size
    diameter = np.sqrt(4 * large / np.pi) * store.summary["crop_pixel_size_um"]
    assert diameter == pytest.approx(33 * 0.25, rel=0.1)


def test_fixed_windows_are_centred_on_the_boxes():
    windows = crop_windows(np.array([[10, 20, 30, 60]]), window=50)
    assert windows.tolist() == [[-5, 15, 50]]


def test_a_window_larger_than_the_image_is_refused_naming_the_key(tmp_path):
    path = _smear(tmp_path / "in")
    with pytest.raises(
        InputError,
        match=r"config key 'crop.window_px': 121 px is larger than the image "
        r".*s.png \(120x160 px\)",
    ):
        crop(path, tmp_path / "crops.h5", InputConfig(path=str(path)), CropConfig(window_px=121))
    assert not (tmp_path / "crops.h5").exists()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "0.0 must be > 0"),
        (-0.5, "-0.5 must be > 0"),
        ("big", "expected a number, got 'big'"),
        (True, "expected a number, got True"),
        (float("nan"), "nan must be > 0"),
        (float("inf"), "expected a positive number of micrometres"),
    ],
)
def test_a_pixel_size_that_is_not_a_positive_number_is_refused(value, problem):
    with pytest.raises(ConfigError, match=rf"config key 'crop.pixel_size_um': {problem}"):
        load_config(overrides=[{"crop": {"pixel_size_um": value}}])


@pytest.mark.parametrize(("value", "problem"), [(0, "0 must be >= 1"), (2.5, "expected an integer")])
def test_a_window_that_is_not_a_positive_integer_is_refused(value, problem):
    with pytest.raises(ConfigError, match=rf"config key 'crop.window_px': {problem}"):
        load_config(overrides=[{"crop": {"window_px": value}}])


def test_the_synthetic_pixel_size_comes_from_the_runs_config():
    text = yaml.safe_dump({"crop": {"size": 64, "window_px": 80, "pixel_size_um": 0.1}})
    assert crop_pixel_size({"config": text}) == pytest.approx(0.125)
    # per-cell windows: each crop its own scale, so the synthetic pixel size is unknown
    assert crop_pixel_size({"config": yaml.safe_dump({"crop": {"pixel_size_um": 0.1}})}) is None
    assert crop_pixel_size({}) is None


@pytest.mark.parametrize("channels", [3, 2, 1])
def test_bioio_reads_the_stacks_as_ome_tiff(tmp_path, channels):
    bioio = pytest.importorskip("bioio", reason="bioio is in the dev extra")
    bioio_ome_tiff = pytest.importorskip("bioio_ome_tiff", reason="bioio-ome-tiff is in the dev extra")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, channels), dtype=np.uint8)
    index = np.arange(5)
    names = ["R", "G", "B"] if channels == 3 else ["DAPI", "actin"][:channels]
    plan = StackPlan(2, "ring", index, index + 10)
    with TiffStackWriter(
        tmp_path,
        [plan],
        image_shape=(8, 8, channels),
        channel_names=names,
        info={"model_sha256": "x"},
        pixel_size_um=0.375,
    ) as w:
        empty = np.zeros((5, 0), np.float32)
        w.write(
            Batch(
                offset=0,
                images=images,
                index=index,
                seed=index + 10,
                category=np.full(5, 2),
                label=np.full(5, "ring", dtype=object),
                z=empty,
                categorical=empty,
                continuous=empty,
            )
        )
    path = tmp_path / "category_02_ring.tif"
    with warnings.catch_warnings():  # ome-types warns about an argument it ignores, not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        image = bioio.BioImage(path, reader=bioio_ome_tiff.Reader)
        assert image.dims.order == "TCZYX" and (image.dims.T, image.dims.C) == (5, channels)
        assert [str(n) for n in image.channel_names] == names
        assert (image.physical_pixel_sizes.Y, image.physical_pixel_sizes.X) == (0.375, 0.375)
        np.testing.assert_array_equal(image.get_image_data("TYXC"), images)
    # bioio's plain-TIFF plugin also finds the cells along T and the pixel size (it names channels itself)
    bioio_tifffile = pytest.importorskip("bioio_tifffile", reason="bioio-tifffile is in the dev extra")
    plain = bioio.BioImage(path, reader=bioio_tifffile.Reader)
    assert (plain.dims.T, plain.dims.C) == (5, channels) and plain.physical_pixel_sizes.X == 0.375
    with tifffile.TiffFile(path) as tif:  # the ImageJ side: resolution in pixels per centimetre
        page = tif.pages[0]
        x_res = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3 and x_res[0] / x_res[1] == pytest.approx(1e4 / 0.375)
        assert page.tags["IJMetadata"].value["Labels"][:channels] == [f"ring #0 seed 10 {n}" for n in names]
        assert json.loads(page.tags["IJMetadata"].value["Info"])["pixel_size_um"] == 0.375


def test_synthesis_carries_the_crop_pixel_size_into_hdf5_and_tiff(tmp_path):
    import h5py
    from synth_runs import make_run

    from infogan_cells.config import SynthConfig
    from infogan_cells.synthesis.gather import gather
    from infogan_cells.synthesis.synthesise import synthesise

    config_text = yaml.safe_dump({"crop": {"size": 16, "window_px": 40, "pixel_size_um": 0.2}})
    run = make_run(tmp_path / "run", meta={"config": config_text})
    cfg = SynthConfig(n=12, batch_size=8, micro_batch=4)
    shards = [
        synthesise(run, tmp_path / f"s{i}.h5", cfg, shard=(i, 2), tiff_dir=tmp_path / "parts")
        for i in range(2)
    ]
    gather(shards, tmp_path / "synth.h5", tiff_dir=tmp_path / "tiff")
    with h5py.File(tmp_path / "synth.h5") as f:
        assert float(f.attrs["pixel_size_um"]) == pytest.approx(0.5)  # 0.2 um x 40 / 16
    for folder in ("parts", "tiff"):
        for path in sorted((tmp_path / folder).glob("*.tif")):
            with tifffile.TiffFile(path) as tif:
                pixels = tif.ome_metadata
                assert 'PhysicalSizeX="0.5"' in pixels and 'PhysicalSizeXUnit="µm"' in pixels, path
                assert all(f'Name="{name}"' in pixels for name in ("red", "green", "blue")), path
    # without a fixed window the synthetic pixel size is unknown: none is claimed
    run = make_run(tmp_path / "run2", meta={"config": yaml.safe_dump({"crop": {"pixel_size_um": 0.2}})})
    synthesise(run, tmp_path / "u.h5", cfg, tiff_dir=tmp_path / "u")
    with h5py.File(tmp_path / "u.h5") as f:
        assert json.loads(f.attrs["pixel_size_um"]) is None
    with tifffile.TiffFile(next((tmp_path / "u").glob("*.tif"))) as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
