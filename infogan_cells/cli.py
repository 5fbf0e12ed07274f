"""The ``infogan-cells`` command: one subcommand per stage, each a thin layer over a package call.

The stages that a config shapes take ``--config FILE`` (the same YAML Snakemake reads; each
stage reads its own section) and ``--set key=value`` overrides; their own options override
both. A user's mistake (``InputError``) prints one line naming the file or key and exits with
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from infogan_cells import __version__
from infogan_cells.config import Config, dump_config, load_config, parse_set_option
from infogan_cells.errors import InputError

log = logging.getLogger("infogan_cells")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config, the workflow's config file (default: the built-in defaults)",
    )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="set_",
        help="override a config key, e.g. --set train.batch_size=128 (repeatable)",
    )
    _verbose_arg(p)


def _input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", help="input file or folder (input.path)")
    p.add_argument(
        "--format", choices=FORMATS, help="input format (input.format; auto guesses from the path)"
    )


def _verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")


def _load(args: argparse.Namespace, **section_overrides: dict) -> Config:
    overrides = [parse_set_option(s) for s in args.set_]
    extra = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in section_overrides.items()}
    extra = {k: v for k, v in extra.items() if v}
    if "device" in extra:
        extra["device"] = extra["device"]["device"]
    return load_config(args.config, [*overrides, extra])


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: out of range (need 0 <= i < n and n >= 1)")
    return i, n


# --------------------------------------------------------------------------------------
# Subcommands


def cmd_simulate(args: argparse.Namespace) -> None:
    cfg = _load(args, simulate={"n_images": args.images, "seed": args.seed})
    from infogan_cells.data.simulate import simulate_smears

    json_path = simulate_smears(args.out, cfg.simulate)
    print(json_path)


def cmd_crop(args: argparse.Namespace) -> None:
    cfg = _load(
        args,
        input={"path": args.input, "format": args.format, "segment": args.segment or None},
        crop={"size": args.size, "keep_failed": args.keep_failed or None, "align": args.align or None},
    )
    from infogan_cells.preprocess.crop import crop

    summary = crop(
        cfg.input.path,
        args.out,
        cfg.input,
        cfg.crop,
        images=args.images or None,
        config_text=dump_config(cfg),
    )
    log.info("crop summary: %s", summary)


def cmd_merge_crops(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from infogan_cells.preprocess.crop import merge_crops

    merge_crops(args.parts, args.out, cfg.crop, config_text=dump_config(cfg))


def cmd_list_images(args: argparse.Namespace) -> None:
    cfg = _load(args, input={"path": args.input, "format": args.format})
    from infogan_cells.data.readers import list_source_images

    for name in list_source_images(cfg.input.path, cfg.input.format, segment=cfg.input.segment):
        print(name)


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _load(args, device={"device": args.device})
    from infogan_cells.training.loop import train

    out = Path(args.out)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputError(f"{blocking}: is a file; --out {args.out} must name a run directory")
    seed = args.seed if args.seed is not None else cfg.train.seeds[0]
    progress = not args.no_progress
    train(
        args.crops, args.out, cfg.train, seed=seed, device=cfg.device, progress=progress, resolved_config=cfg
    )


def cmd_analyse(args: argparse.Namespace) -> None:
    cfg = _load(args, device={"device": args.device})
    from infogan_cells.analysis.analyse import analyse

    analyse(args.run, args.crops, args.out, cfg.analyse, device=cfg.device)


def cmd_compare_seeds(args: argparse.Namespace) -> None:
    from infogan_cells.analysis.seeds import compare_seeds

    compare_seeds(args.analyses, args.out)


def cmd_synthesise(args: argparse.Namespace) -> None:
    cfg = _load(args, device={"device": args.device}, synthesis={"n": args.n, "seed": args.seed})
    from infogan_cells.synthesis.synthesise import synthesise

    shard = _parse_shard(args.shard)
    synthesise(
        args.run,
        args.out,
        cfg.synthesis,
        shard=shard,
        tiff_dir=args.tiff,
        per_category=args.per_category,
        overwrite=args.overwrite,
        device=cfg.device,
        category_map=args.category_map,
    )


def cmd_gather_synthesis(args: argparse.Namespace) -> None:
    from infogan_cells.synthesis.gather import gather

    gather(args.shards, args.out, tiff_dir=args.tiff, overwrite=args.overwrite)


def cmd_validate(args: argparse.Namespace) -> None:
    from infogan_cells.synthesis.validate import validate_file

    problems = validate_file(args.file)
    if problems:
        for p in problems:
            print(f"{args.file}: {p}", file=sys.stderr)
        raise SystemExit(1)
    print(f"{args.file}: valid")


def cmd_schema(args: argparse.Namespace) -> None:
    import json

    from infogan_cells.config import schema_of

    text = json.dumps(schema_of(), indent=2) + "\n"
    if args.out:
        from infogan_cells._io import write_text_atomic

        write_text_atomic(args.out, text)
    else:
        sys.stdout.write(text)


# --------------------------------------------------------------------------------------


DESCRIPTION = """\
Microscopy images to labelled synthetic cells with an InfoGAN, one stage at a time.
The Snakemake workflow runs the same stages; each is also a Python function."""

EPILOG = """\
stages in order:
  crop --input DATA --out crops.h5                  single-cell crops and their metadata
  train --crops crops.h5 --out run/                 an InfoGAN on the crops
  analyse --run run/ --crops crops.h5 --out ana/    categories, codes, quality, reports
  synthesise --run run/ --n 10000 --out synth.h5    labelled synthetic cells

'infogan-cells STAGE --help' lists a stage's options."""

FORMATS = ["auto", "bbbc041", "csv", "folder", "tiff", "npz", "idx"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infogan-cells",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    p = sub.add_parser("simulate", help="generate Giemsa-like smear images with true boxes (default data)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--images", type=int, help="number of images (simulate.n_images)")
    p.add_argument("--seed", type=int, help="seed (simulate.seed)")
    _config_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("crop", help="read images and boxes (or segment), crop, QC, write crops.h5")
    _input_args(p)
    p.add_argument("--size", type=int, help="crop side in pixels (crop.size)")
    p.add_argument("--segment", action="store_true", help="find cells by segmentation (no boxes)")
    p.add_argument("--keep-failed", action="store_true", help="keep QC failures, flagged")
    p.add_argument("--align", action="store_true", help="rotate cells to a common orientation")
    p.add_argument("--images", nargs="+", metavar="NAME", help="crop only these source images")
    p.add_argument("--out", required=True, type=Path, help="output crop store (.h5)")
    _config_args(p)
    p.set_defaults(func=cmd_crop)

    p = sub.add_parser("merge-crops", help="join per-image crop stores into one")
    p.add_argument("parts", nargs="+", type=Path, metavar="PART", help="crop stores made by 'crop --images'")
    p.add_argument("--out", required=True, type=Path, help="output crop store (.h5)")
    _config_args(p)
    p.set_defaults(func=cmd_merge_crops)

    p = sub.add_parser("list-images", help="list the source images of an input (one job each)")
    _input_args(p)
    _config_args(p)
    p.set_defaults(func=cmd_list_images)

    p = sub.add_parser("train", help="train an InfoGAN on a crop store")
    p.add_argument("--crops", required=True, type=Path, help="crop store (.h5) made by 'crop'")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--seed", type=int, help="training seed (default: the first of train.seeds)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    _config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("analyse", help="assign crops to categories, measure codes and quality, write reports")
    p.add_argument("--run", required=True, type=Path, help="run directory made by 'train'")
    p.add_argument("--crops", required=True, type=Path, help="the crop store the run was trained on")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (device)")
    _config_args(p)
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser("compare-seeds", help="compare the analyses of several seeds and pick one")
    p.add_argument(
        "analyses",
        nargs="+",
        type=Path,
        metavar="ANALYSIS",
        help="analysis folders, named after their seed (seed0, seed1, ...)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (index.html, seeds.json)")
    _verbose_arg(p)
    p.set_defaults(func=cmd_compare_seeds)

    p = sub.add_parser("synthesise", aliases=["synthesize"], help="generate labelled synthetic cells")
    p.add_argument("--run", required=True, type=Path, help="run directory made by 'train'")
    p.add_argument("--n", type=int, help="size of the whole data set (synthesis.n)")
    p.add_argument("--out", required=True, type=Path, help="output HDF5")
    p.add_argument("--tiff", type=Path, help="also write per-category TIFF stacks here")
    p.add_argument("--per-category", action="store_true", help="--n images of every category")
    p.add_argument("--shard", default="0/1", help="make the i-th of n parts (from 0), e.g. 2/4")
    p.add_argument("--seed", type=int, help="base seed (synthesis.seed)")
    p.add_argument("--category-map", type=Path, help="category_map.csv from the analysis (label names)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (device)")
    _config_args(p)
    p.set_defaults(func=cmd_synthesise)

    p = sub.add_parser("gather-synthesis", help="join shards with an HDF5 virtual dataset")
    p.add_argument(
        "shards", nargs="+", type=Path, metavar="SHARD", help="shard files made by 'synthesise --shard'"
    )
    p.add_argument("--out", required=True, type=Path, help="output master HDF5")
    p.add_argument("--tiff", type=Path, help="write per-category TIFF stacks here")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _verbose_arg(p)
    p.set_defaults(func=cmd_gather_synthesis)

    p = sub.add_parser("validate", help="check a synthetic HDF5 file against the documented layout")
    p.add_argument("file", type=Path, help="a synthetic data set (shard or master)")
    _verbose_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the config's JSON schema")
    p.add_argument("--out", type=Path, help="write it to this file instead")
    _verbose_arg(p)
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except InputError as err:
        print(f"infogan-cells {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infogan-cells {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
