"""Bad input: each problem is an InputError naming the file and what is wrong, or a skip that
is counted in the summary and reported in the log."""

from __future__ import annotations

import numpy as np
import pytest
from bad_inputs import CFG, GOOD, _bbbc041, _crop_and_check, _image
from PIL import Image

from infogan_cells.cli import main
from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.readers import list_source_images, read_cells
from infogan_cells.errors import InputError
from infogan_cells.preprocess.crop import crop

# --------------------------------------------------------------------------------------
# Counted skips


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_unreadable_image_is_a_counted_skip(tmp_path, caplog, damage):
    _image(tmp_path / "images" / "good.png")
    bad = _image(tmp_path / "images" / "bad.png")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x89PNG\r\n\x1a\n" + bytes(200))
    path = _bbbc041(tmp_path, [("/images/good.png", GOOD), ("/images/bad.png", GOOD)])

    summary = _crop_and_check(path, tmp_path, caplog, "unreadable_image", 2, 2, "bad.png")

    assert summary["skipped_images"] == {"unreadable_image": 1} and summary["n_images_read"] == 1


def test_missing_image_is_a_counted_skip(tmp_path, caplog):
    _image(tmp_path / "images" / "good.png")
    path = _bbbc041(tmp_path, [("/images/good.png", GOOD), ("/images/gone.png", GOOD + GOOD)])

    summary = _crop_and_check(path, tmp_path, caplog, "missing_image", 4, 2, "gone.png")

    assert summary["skipped_images"] == {"missing_image": 1}


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((30, 10, 10, 30), "bad_box"),  # min_row > max_row
        ((10, 10, 10, 30), "empty_box"),  # zero height
        ((100, 200, 130, 230), "outside_image"),
    ],
)
def test_bad_boxes_are_counted_skips(tmp_path, caplog, box, reason):
    _image(tmp_path / "images" / "a.png")
    path = _bbbc041(tmp_path, [("/images/a.png", [*GOOD, box])])

    _crop_and_check(path, tmp_path, caplog, reason, 1, 2, "images/a.png: box 2")


def test_unreadable_json_box_is_a_counted_skip(tmp_path, caplog):
    _image(tmp_path / "images" / "a.png")
    path = _bbbc041(tmp_path, [("/images/a.png", [*GOOD, ("x", 1, 2, 3)])])

    _crop_and_check(path, tmp_path, caplog, "bad_box", 1, 2, "object 2")


def test_unreadable_csv_row_is_a_counted_skip_naming_the_line(tmp_path, caplog):
    _image(tmp_path / "a.png")
    path = tmp_path / "boxes.csv"
    path.write_text(
        "image,min_row,min_col,max_row,max_col,label\n"
        "a.png,10,10,30,30,x\n"
        "a.png,ten,10,30,30,x\n"  # line 3
        "a.png,35,45,55,65,x\n"
        "a.png,1,2\n"
    )  # line 5: too short

    summary = _crop_and_check(path, tmp_path, caplog, "bad_row", 2, 2, "line 3")

    assert "line 5" in caplog.text and summary["n_boxes"] == 4


def test_skips_with_no_image_are_counted_once_over_per_image_jobs(tmp_path):
    for name in ("a.png", "b.png"):
        _image(tmp_path / name)
    path = tmp_path / "boxes.csv"
    path.write_text("image,min_row,min_col,max_row,max_col\na.png,10,10,30,30\n,1,2,3,4\nb.png,10,10,30,30\n")

    counts = [
        crop(path, tmp_path / f"{n}.h5", InputConfig(), CFG, images=[n])["skipped"]
        for n in list_source_images(path)
    ]

    assert counts == [{"bad_row": 1}, {}]


# --------------------------------------------------------------------------------------
# Errors


def test_unknown_format_is_an_error(tmp_path):
    path = tmp_path / "cells.xyz"
    path.write_text("?")
    with pytest.raises(InputError, match=r"cells\.xyz: cannot tell the input format"):
        read_cells(path)
    with pytest.raises(InputError, match=r"cells\.xyz: unknown input format 'hdf5'"):
        read_cells(path, "hdf5")


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"nothing\.json: input not found"):
        read_cells(tmp_path / "nothing.json")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"empty: no images \(.*\) found in the folder"):
        read_cells(tmp_path / "empty")


def test_npz_arrays_of_mismatched_length_are_an_error(tmp_path):
    path = tmp_path / "cells.npz"
    np.savez(path, images=np.zeros((4, 2, 8, 8), np.uint16), labels=np.arange(3))
    with pytest.raises(InputError, match=r"cells\.npz: 'labels' has 3 entries for 4 images"):
        read_cells(path)


def test_npz_without_images_or_not_a_zip_is_an_error(tmp_path):
    np.savez(tmp_path / "a.npz", pictures=np.zeros((2, 4, 4)))
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"a\.npz: NPZ has no 'images' array \(found: pictures\)"):
        read_cells(tmp_path / "a.npz")
    with pytest.raises(InputError, match=r"b\.npz: not a readable NPZ file"):
        read_cells(tmp_path / "b.npz")


def test_pathname_escaping_the_data_root_is_an_error(tmp_path):
    path = _bbbc041(tmp_path / "data", [("../../x.png", GOOD)])
    with pytest.raises(InputError, match=r"ann\.json: image path '\.\./\.\./x\.png' escapes the data root"):
        read_cells(path)
    with pytest.raises(InputError, match="escapes the data root"):
        list_source_images(path)


def test_csv_without_box_columns_is_an_error(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("file,x,y\na.png,1,2\n")
    with pytest.raises(InputError, match=r"boxes\.csv: CSV lacks the columns image, min_row"):
        read_cells(path)


def test_invalid_json_is_an_error(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('[{"image": ')
    with pytest.raises(InputError, match=r"ann\.json: not valid JSON"):
        read_cells(path)
    path.write_text('{"image": {}}')
    with pytest.raises(InputError, match=r"ann\.json: expected a BBBC041 JSON list"):
        read_cells(path)


def test_annotations_naming_no_images_are_an_error(tmp_path):
    (tmp_path / "ann.json").write_text("[]")
    (tmp_path / "boxes.csv").write_text("image,min_row,min_col,max_row,max_col\n,1,2,3,4\n")
    with pytest.raises(InputError, match=r"ann\.json: names no images"):
        read_cells(tmp_path / "ann.json")
    with pytest.raises(InputError, match=r"boxes\.csv: names no images \(1 unreadable rows or boxes\)"):
        read_cells(tmp_path / "boxes.csv")


def test_images_with_different_channel_counts_are_an_error(tmp_path):
    for name, shape in (("a.png", (20, 20, 3)), ("b.png", (20, 20, 3)), ("c.png", (20, 20))):
        (tmp_path / "cells").mkdir(exist_ok=True)
        Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / "cells" / name)
    with pytest.raises(InputError, match=r"c\.png: has 1 channel\(s\) where the other images have 3"):
        crop(tmp_path / "cells", tmp_path / "c.h5", InputConfig(), CFG)


def test_truncated_idx_is_an_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([10, 28, 28], ">i4").tobytes() + bytes(100))
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte: IDX file truncated"):
        read_cells(path)


def test_unknown_image_name_is_an_error(tmp_path):
    path = _bbbc041(tmp_path, [("/images/a.png", GOOD)])
    with pytest.raises(InputError, match=r"ann\.json: no source image named 'images/b\.png'"):
        read_cells(path, images=["images/b.png"])


def test_stain_normalisation_of_grey_images_is_an_error(tmp_path):
    (tmp_path / "cells").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "cells" / "a.png")
    with pytest.raises(InputError, match=r"a\.png: crop\.stain=reinhard needs RGB images"):
        crop(tmp_path / "cells", tmp_path / "c.h5", InputConfig(), CropConfig(stain="reinhard"))


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = _bbbc041(tmp_path / "data", [("../../x.png", GOOD)])

    status = main(["crop", "--input", str(path), "--out", str(tmp_path / "c.h5")])

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert status == 2
    assert lines == [
        f"infogan-cells crop: error: {path}: image path '../../x.png' escapes the data root "
        f"{tmp_path / 'data'}"
    ]
    assert "Traceback" not in err
    assert not (tmp_path / "c.h5").exists()
