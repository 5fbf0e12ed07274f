"""How well does ``segment_cells`` find the annotated cells of real smears?

For every image of each data set, the boxes found by :func:`infogan_cells.preprocess.segment.segment_cells`
are matched one-to-one to the true boxes (Hungarian, IoU >= 0.5); recall and precision are
pooled over the data set. True boxes are clipped to the image (IML_Malaria boxes run up to
5 px past the edge). Run from the repository root:

    .venv/bin/python benchmarks/segment_accuracy.py
    .venv/bin/python benchmarks/segment_accuracy.py --datasets iml_malaria --min-solidity 0.9

Results are written down in docs/benchmarks.md, section "Segmentation (--segment)".
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from skimage import io

from infogan_cells.preprocess.box_match import box_iou, match_boxes
from infogan_cells.preprocess.segment import segment_cells

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# (annotation file, segment_cells options). BBBC041's annotators left out cells cut by the
# image edge (10 of its 560 boxes touch the edge), IML_Malaria's boxed them (744 of 8,909
# boxes), so cells touching the edge are dropped for BBBC041 only.
DATASETS = {
    "bbbc041": ("training_subset.json", {"exclude_border": True}),
    "iml_malaria": ("annotations_bbbc041_format.json", {}),
}


def read_entries(root: Path, annotations: str) -> list[tuple[Path, np.ndarray]]:
    """(image path, (T, 4) true boxes as min_row, min_col, max_row, max_col) per image."""
    entries = []
    for entry in json.loads((root / annotations).read_text()):
        boxes = [
            (b["minimum"]["r"], b["minimum"]["c"], b["maximum"]["r"], b["maximum"]["c"])
            for b in (o["bounding_box"] for o in entry["objects"])
        ]
        path = root / entry["image"]["pathname"].lstrip("/")
        entries.append((path, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    return entries


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, shape[0])
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, shape[1])
    return clipped


def evaluate(root: Path, annotations: str, options: dict, limit: int | None, iou: float) -> dict:
    entries = read_entries(root, annotations)[:limit]
    tp = fp = fn = apart = 0
    seconds = 0.0
    image_precision = []
    for path, true in entries:
        image = io.imread(path)
        start = time.perf_counter()  # segmentation only, not decoding
        cells = segment_cells(image, **options)
        seconds += time.perf_counter() - start
        true = clip_boxes(true, image.shape[:2])
        t, p, n = match_boxes(cells, true, iou=iou)
        tp, fp, fn = tp + t, fp + p, fn + n
        # Found boxes that overlap no true box at all: a cell the annotators left out, or debris.
        apart += int(np.count_nonzero(box_iou(cells, true).max(axis=1, initial=0) == 0))
        image_precision.append(t / max(1, t + p))
        print(f"  {path.name}: true {len(true)}, found {len(cells)}, tp {t}", file=sys.stderr)
    return {
        "images": len(entries),
        "true boxes": tp + fn,
        "found boxes": tp + fp,
        "recall": tp / max(1, tp + fn),
        "precision": tp / max(1, tp + fp),
        "median image precision": float(np.median(image_precision)) if entries else 0.0,
        "found, no overlap": apart,
        "s / image": seconds / max(1, len(entries)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the data sets")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--limit", type=int, default=None, help="first N images of each data set")
    parser.add_argument("--iou", type=float, default=0.5, help="least IoU of a match")
    parser.add_argument(
        "--min-solidity", type=float, default=None, help="segment_cells' min_solidity (default: its own)"
    )
    args = parser.parse_args(argv)

    rows, options_text = {}, {}
    for name in args.datasets:
        root = args.data / name
        if not root.is_dir():
            sys.exit(f"{root}: not found")
        annotations, options = DATASETS[name]
        if args.min_solidity is not None:
            options = {**options, "min_solidity": args.min_solidity}
        options_text[name] = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        rows[name] = evaluate(root, annotations, options, args.limit, args.iou)

    header = ["data set", "options", *next(iter(rows.values()))]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, row in rows.items():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print(f"| {name} | {options_text[name]} | " + " | ".join(cells) + " |")
    print(f"\ncommand: {shlex.join(['python', *sys.argv])}")


if __name__ == "__main__":
    main()
