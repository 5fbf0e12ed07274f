"""The command line: help for every option, plain top-level help, --config only where it acts."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from infogan_cells.cli import build_parser, main

CONFIG_STAGES = {"simulate", "crop", "merge-crops", "list-images", "train", "analyse", "synthesise"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in action.choices.items() if name != "synthesize"}


def test_every_option_has_help_text():
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in _subparsers(build_parser()).items()
        for a in p._actions
        if not a.help
    ]
    assert not missing


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "``" not in out and ":func:" not in out
    assert "stages in order:" in out and "synthesise --run" in out


def test_config_options_only_where_a_config_acts(capsys):
    stages = _subparsers(build_parser())
    with_config = {
        name for name, p in stages.items() if any("--config" in a.option_strings for a in p._actions)
    }
    assert with_config == CONFIG_STAGES
    with pytest.raises(SystemExit) as exit_:
        main(["compare-seeds", "a", "--out", "b", "--config", "c.yaml"])
    assert exit_.value.code == 2 and "unrecognized arguments: --config" in capsys.readouterr().err


def test_config_and_set_act_on_a_stage(tmp_path, capsys):
    for name in ("b.png", "a.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    config = tmp_path / "c.yaml"
    config.write_text(f"input:\n  path: {tmp_path / 'nowhere'}\n  format: folder\n")
    assert main(["list-images", "--config", str(config), "--set", f"input.path={tmp_path}"]) == 0
    assert capsys.readouterr().out.split() == []  # single-cell images: one job for the folder
    assert (
        main(
            [
                "list-images",
                "--config",
                str(config),
                "--set",
                f"input.path={tmp_path}",
                "--set",
                "input.segment=true",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.split() == ["a.png", "b.png"]  # whole images to segment: one job each
