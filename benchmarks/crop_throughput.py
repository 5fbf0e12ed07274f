"""How fast is the crop stage, next to only decoding the same images?

On the real smears (the six BBBC041 PNGs and the first ``--iml`` IML_Malaria JPEGs), in one
run, each measured ``--repeats`` times (the fastest kept, as the machine is shared):

* ``decode``: decoding every image (PIL, pixels loaded), nothing else;
* ``per image``: what one image costs inside the stage (decode, normalise, crop, QC), image by
  image, interleaved with its decode so both see the same machine load;
* ``crop()``: the stage end to end, as one job per input file: the above plus the crop store
  (gzip-compressed HDF5), its CSV and the QC montages; with ``crop.workers`` 1 and 2.

Run from the repository root:

    .venv/bin/python benchmarks/crop_throughput.py
    .venv/bin/python benchmarks/crop_throughput.py --iml 80 --repeats 5 --workers 1 2

Results are written down in docs/benchmarks.md, section "Crop throughput".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infogan_cells.config import CropConfig, InputConfig
from infogan_cells.data.cells import BOX_COLUMNS
from infogan_cells.data.readers import list_source_images, read_cells
from infogan_cells.preprocess import crop as crop_module
from infogan_cells.preprocess.source import Boxes, crop_source

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INPUTS = {
    "bbbc041": DATA / "bbbc041" / "training_subset.json",
    "iml_malaria": DATA / "iml_malaria" / "annotations_bbbc041_format.json",
}


def jobs(n_iml: int) -> list[tuple[Path, list[str]]]:
    """(annotation file, image names) of the benchmark's inputs."""
    out = [(INPUTS["bbbc041"], list_source_images(INPUTS["bbbc041"]))]
    if n_iml:
        out.append((INPUTS["iml_malaria"], list_source_images(INPUTS["iml_malaria"])[:n_iml]))
    return out


def per_image(inputs: list[tuple[Path, list[str]]], cfg: CropConfig, repeats: int) -> dict:
    """Per input file: fastest decode and fastest in-stage time (decode + normalise + crop + QC),
    image by image, summed."""
    out = {}
    for path, names in inputs:
        cells = read_cells(path, images=names)
        groups = cells.boxes.groupby("source").indices
        figures = {"n_images": 0, "n_cells": 0, "decode_s": 0.0, "per_image_s": 0.0}
        for i, source in enumerate(cells.sources):
            rows = cells.boxes.iloc[groups[i]]
            boxes = Boxes(
                rows["source_index"].to_numpy(np.int64),
                rows[list(BOX_COLUMNS)].to_numpy(np.float64),
                rows["label"].to_numpy(dtype=object),
            )
            best_decode = best_stage = np.inf
            for _ in range(repeats):
                t = time.perf_counter()
                source.decode()
                best_decode = min(best_decode, time.perf_counter() - t)
                t = time.perf_counter()
                result = crop_source(source, boxes, False, cfg, None)
                best_stage = min(best_stage, time.perf_counter() - t)
            figures["decode_s"] += best_decode
            figures["per_image_s"] += best_stage
            figures["n_images"] += 1
            figures["n_cells"] += result.n_crops
        out[path.parent.name] = figures
    return out


def end_to_end(inputs: list[tuple[Path, list[str]]], cfg: CropConfig, repeats: int) -> float:
    """Fastest wall time of crop() over the inputs (one job per annotation file)."""
    best = np.inf
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t = time.perf_counter()
            for k, (path, names) in enumerate(inputs):
                crop_module.crop(
                    path, Path(tmp) / f"r{r}-{k}.h5", InputConfig(path=str(path)), cfg, images=names
                )
            best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iml", type=int, default=20, help="IML_Malaria images to add to the 6 BBBC041 ones")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (the fastest kept)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="crop.workers values to time")
    parser.add_argument("--size", type=int, default=64, help="crop side (crop.size)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 1

    inputs = jobs(args.iml)
    cfg = dataclasses.replace(CropConfig(), size=args.size)
    sets = per_image(inputs, cfg, args.repeats)
    total = {k: sum(f[k] for f in sets.values()) for k in ("n_images", "n_cells", "decode_s", "per_image_s")}
    for w in args.workers:
        total[f"crop_workers{w}_s"] = end_to_end(inputs, dataclasses.replace(cfg, workers=w), args.repeats)

    print(f"command: .venv/bin/python benchmarks/crop_throughput.py {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"{total['n_images']} images (6 BBBC041 PNG 1600x1200, {args.iml} IML JPEG 1280x960), "
        f"{total['n_cells']} crops of {args.size} px; fastest of {args.repeats}\n"
    )
    print("| images | what | seconds | images/s | cells/s | x decode |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for name, f in [*sets.items(), ("all", total)]:
        rows.append((name, "decode only", f["decode_s"], f))
        rows.append((name, "per image: decode + normalise + crop + QC", f["per_image_s"], f))
    rows += [
        (
            "all",
            f"crop() end to end, workers={w} (+ store, CSV, montages)",
            total[f"crop_workers{w}_s"],
            total,
        )
        for w in args.workers
    ]
    for name, what, s, f in rows:
        print(
            f"| {name} | {what} | {s:.2f} | {f['n_images'] / s:.1f} | {f['n_cells'] / s:.0f} | "
            f"{s / f['decode_s']:.2f} |"
        )
    figures = {"sets": sets, "all": total}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
