import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import draw, measure

from infogan_cells.analysis.morphology import foreground_mask, measure_morphology


def _disk_image(
    radius: float,
    *,
    size: int = 32,
    value: int = 200,
    background: int = 0,
    centre: tuple[int, int] = (16, 16),
    channels: int = 3,
) -> np.ndarray:
    img = np.full((size, size, channels), background, np.uint8)
    rr, cc = draw.disk(centre, radius, shape=(size, size))
    img[rr, cc] = value
    return img


def test_area_of_a_disk_is_pi_r_squared_and_circle_is_not_eccentric():
    radii = np.array([6, 9, 12])
    images = np.stack([_disk_image(r) for r in radii])
    df = measure_morphology(images)
    np.testing.assert_allclose(df["area"], np.pi * radii**2, rtol=0.05)
    np.testing.assert_allclose(df["eccentricity"], 0, atol=0.05)
    np.testing.assert_allclose(df["centroid_offset"], np.hypot(0.5, 0.5), atol=1e-9)  # centre (15.5, 15.5)


def test_dark_cell_on_bright_background_is_found_like_a_bright_one():
    bright = _disk_image(7, value=200, background=10)
    dark = _disk_image(7, value=40, background=230)
    df = measure_morphology(np.stack([bright, dark]))
    assert df["area"].iloc[0] == df["area"].iloc[1] == (foreground_mask(bright[None])[0]).sum()
    assert df["intensity"].tolist() == [200, 40]


def test_pallor_is_filled_and_specks_ignored():
    img = _disk_image(9, value=120, background=230)
    rr, cc = draw.disk((16, 16), 3)
    img[rr, cc] = 230  # central pallor as bright as the background
    img[1:3, 28:30] = 100  # a speck of debris in a corner
    mask = foreground_mask(img[None])[0]
    expected = np.zeros((32, 32), bool)
    expected[draw.disk((16, 16), 9, shape=(32, 32))] = True
    assert (mask == expected).all()


def test_shape_measures_equal_regionprops_on_ellipses():
    images, truth = [], []
    for rotation in (-1.2, -0.4, 0.3, 1.0):
        img = np.zeros((48, 48, 1), np.uint8)
        rr, cc = draw.ellipse(24, 23, 6, 14, rotation=rotation, shape=(48, 48))
        img[rr, cc, 0] = 180
        images.append(img)
        truth.append(
            measure.regionprops_table(
                (img[..., 0] > 0).astype(int), properties=["area", "eccentricity", "orientation"]
            )
        )
    df = measure_morphology(np.stack(images), channel_names=["dapi"])
    for i, t in enumerate(truth):
        assert df["area"].iloc[i] == t["area"][0]
        assert df["eccentricity"].iloc[i] == pytest.approx(t["eccentricity"][0], abs=1e-9)
        assert df["orientation"].iloc[i] == pytest.approx(t["orientation"][0], abs=1e-9)
    assert "intensity_dapi" in df.columns
    np.testing.assert_allclose(
        df["orientation_cos2"] ** 2 + df["orientation_sin2"] ** 2, df["eccentricity"] ** 2
    )


def test_focus_is_lower_for_a_blurred_cell():
    img = _disk_image(8)
    rng = np.random.default_rng(0)
    textured = np.clip(img.astype(int) + rng.integers(-30, 30, img.shape) * (img > 0), 0, 255).astype(
        np.uint8
    )
    blurred = ndi.gaussian_filter(textured.astype(float), sigma=(1.5, 1.5, 0)).round().astype(np.uint8)
    df = measure_morphology(np.stack([textured, blurred]))
    assert df["focus"].iloc[1] < 0.5 * df["focus"].iloc[0]


def test_blank_crop_gives_finite_values_and_chunks_do_not_change_results():
    rng = np.random.default_rng(1)
    images = np.stack(
        [_disk_image(r, centre=(int(rng.integers(12, 20)), 16)) for r in range(3, 10)]
        + [np.full((32, 32, 3), 90, np.uint8)]
    )
    df = measure_morphology(images)
    assert np.isfinite(df.to_numpy()).all()
    blank = df.iloc[-1]
    assert blank["area"] == 0 and blank["eccentricity"] == 0 and blank["intensity"] == 90
    chunked = measure_morphology(images, chunk=3)
    assert chunked.equals(df)


def test_input_is_not_modified_and_bad_shapes_raise():
    images = np.stack([_disk_image(5)])
    before = images.copy()
    measure_morphology(images)
    assert (images == before).all()
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        measure_morphology(images[0])
    with pytest.raises(ValueError, match="channel names"):
        measure_morphology(images, channel_names=["a"])
    with pytest.raises(ValueError, match="masks must be"):
        measure_morphology(images, masks=np.ones((1, 8, 8), bool))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        foreground_mask(images[0])


def _line_image(width: int, shear: float, size: int = 32) -> np.ndarray:
    """A vertical bar ``width`` px wide and 20 px tall whose top is moved ``shear`` px per row
    to the right (a slanted stroke)."""
    img = np.zeros((size, size, 1), np.uint8)
    for r in range(6, 26):
        c = int(round(16 + shear * (16 - r)))
        img[r, c - width // 2 : c - width // 2 + width] = 220
    return img


def test_slant_and_stroke_width_of_drawn_lines():
    images = np.stack([_line_image(w, s) for w, s in [(2, 0.0), (4, 0.0), (2, 0.4), (3, -0.3)]])
    df = measure_morphology(images)
    np.testing.assert_allclose(df["slant"], [0.0, 0.0, 0.4, -0.3], atol=0.05)
    np.testing.assert_allclose(df["stroke_width"], [2, 4, 2, 3], rtol=0.25)
    assert df["stroke_width"].iloc[1] > 1.5 * df["stroke_width"].iloc[0]


def test_stroke_width_keeps_the_hole_of_a_ring_open():
    ring = _disk_image(10, value=200, channels=1)
    ring[draw.disk((16, 16), 7, shape=(32, 32))] = 0
    disk = _disk_image(10, value=200, channels=1)
    df = measure_morphology(np.stack([ring, disk]))
    assert df["area"].iloc[0] == df["area"].iloc[1]  # the cell's mask fills the hole...
    assert df["stroke_width"].iloc[0] == pytest.approx(3, abs=1)  # ...the stroke does not
    assert df["stroke_width"].iloc[1] > 3 * df["stroke_width"].iloc[0]
