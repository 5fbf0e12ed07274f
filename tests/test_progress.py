"""Progress: a tqdm bar on a terminal, plain periodic log lines otherwise (no carriage returns)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tqdm import tqdm

from infogan_cells import progress as progress_mod
from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.preprocess.crop import crop
from infogan_cells.progress import LogProgress, progress, track, use_bars


@pytest.fixture(autouse=True)
def default_bars():
    yield
    use_bars(None)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_log_lines_come_at_most_every_interval_and_once_at_the_end(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="infogan_cells.progress")
    with LogProgress(100, "train", unit="img", interval=30, clock=clock) as bar:
        for _ in range(10):
            clock.t += 10
            bar.update(10)
            bar.set_postfix({"D": "0.69"})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "train: 30/100 img (30%), 0:30, 1 img/s, D=0.69",
        "train: 60/100 img (60%), 1:00, 1 img/s, D=0.69",
        "train: 90/100 img (90%), 1:30, 1 img/s, D=0.69",
        "train: 100/100 img (100%), 1:40, 1 img/s, D=0.69",
    ]


def test_no_terminal_means_log_lines_and_a_terminal_means_a_bar(caplog):
    # pytest captures stderr: not a terminal
    assert isinstance(progress(5, "crop"), LogProgress)
    use_bars(True)
    bar = progress(5, "crop")
    assert isinstance(bar, tqdm)
    bar.close()
    use_bars(False)
    caplog.set_level(logging.INFO, logger="infogan_cells.progress")
    assert list(track(["a", "b", "c"], "crop", unit="image")) == ["a", "b", "c"]
    assert [r.getMessage()[:22] for r in caplog.records] == ["crop: 3/3 image (100%)"]


def test_disabled_progress_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="infogan_cells.progress")
    with progress(3, "train", enable=False, interval=0) as bar:
        bar.update(3)
    assert not caplog.records


def test_crop_reports_progress_as_lines_into_a_log_file(tmp_path, capfd):
    """A stage with its stderr in a file: ordinary lines, no carriage returns."""
    from PIL import Image

    (tmp_path / "cells" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 40 * i + 60, np.uint8)).save(
            tmp_path / "cells" / "a" / f"{i}.png"
        )
    handler = logging.StreamHandler()  # stderr, captured by capfd: a file, not a terminal
    progress_mod.log.addHandler(handler)
    progress_mod.log.setLevel(logging.INFO)
    try:
        # flat squares hold no cell that QC recognises: keep them flagged (a stage storing no crop fails)
        crop(
            tmp_path / "cells",
            tmp_path / "c.h5",
            InputConfig(format="folder"),
            CropConfig(size=8, keep_failed=True),
            montages=False,
        )
    finally:
        progress_mod.log.removeHandler(handler)
        progress_mod.log.setLevel(logging.NOTSET)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert "crop: " in err and "(100%)" in err


def test_training_progress_in_a_log_file_is_lines_not_carriage_returns(tmp_path, capfd):
    import pandas as pd
    import torch

    from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig
    from infogan_cells.data.store import write_crop_store
    from infogan_cells.training.loop import train

    n = 16
    images = np.zeros((n, 16, 16, 1), np.uint8)
    for i in range(n):
        images[i, 4:12, 4 : 4 + i % 8 + 1] = 200
    obs = pd.DataFrame(
        {
            "source_image": "x",
            "source_index": np.arange(n),
            "min_row": 0,
            "min_col": 0,
            "max_row": 16,
            "max_col": 16,
            "label": "",
            "qc_pass": True,
            "qc_reason": "",
        }
    )
    write_crop_store(tmp_path / "crops.h5", images, obs, ["ch0"], csv=False)
    spec = LatentSpec(z_dim=4, categorical=[2], n_continuous=1)
    schedule = dict(total_images=64, tick_images=32, snapshot_images=64, checkpoint_images=64)
    no_augment = AugmentConfig(rot90=False, flip=False, shift=0)
    small = dict(batch_size=8, g_channels=4, d_channels=4, lambda_pair_mi=0.0)
    config = TrainConfig(latent=spec, diff_augment=no_augment, **small, **schedule)
    handler = logging.StreamHandler()
    progress_mod.log.addHandler(handler)
    progress_mod.log.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tmp_path / "crops.h5", tmp_path / "run", config, seed=0, device="cpu", progress=True)
    finally:
        torch.set_num_threads(threads)
        progress_mod.log.removeHandler(handler)
        progress_mod.log.setLevel(logging.NOTSET)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert "train: 64/64 img (100%)" in err
