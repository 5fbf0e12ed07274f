"""What one item of a shuffled pass over a crop store costs, by chunk layout.

Crops the 4,000 NIH single-cell images (64 px, the ``nih_cells`` preset's crop settings) once,
then writes the same crops twice: with ~1 MiB chunks (how crop stores were written before) and
with one crop per chunk (now). For each it reports the file size, the time to write the images,
to read the whole store at once (training and analysis do that), and ``CropDataset[i]`` in a
shuffled order.
Each figure is the fastest of ``--repeats`` runs (the machine is shared).

Run from the repository root:

    .venv/bin/python benchmarks/crop_store_reads.py

Results are written down in docs/benchmarks.md, section "Reading crops at random".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from infogan_cells.config import load_config
from infogan_cells.data.store import read_crop_store
from infogan_cells.preprocess.crop import crop
from infogan_cells.synthesis.dataset import CropDataset

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "nih_malaria_cell_images_4k"


def _write(src: Path, dst: Path, crops_per_chunk: int) -> float:
    """Copy the crop store ``src`` to ``dst`` with ``crops_per_chunk`` crops per chunk of
    ``/images`` (gzip level 1); return the seconds writing ``/images`` took."""
    cs = read_crop_store(src)
    n, h, w, c = cs.images.shape
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        g.attrs.update(f.attrs)
        f.copy("obs", g)
        t0 = time.perf_counter()
        ds = g.create_dataset(
            "images",
            data=cs.images,
            chunks=(crops_per_chunk, h, w, c),
            compression="gzip",
            compression_opts=1,
        )
        seconds = time.perf_counter() - t0
        ds.attrs.update(f["images"].attrs)
    return seconds


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the fastest is kept")
    parser.add_argument("--items", type=int, default=2000, help="shuffled items read per run")
    args = parser.parse_args()
    cfg = load_config(REPO / "config" / "nih_cells.yaml", [{"input": {"path": str(DATA)}}])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        crop(cfg.input.path, tmp / "crops.h5", cfg.input, cfg.crop, montages=False)
        with h5py.File(tmp / "crops.h5", "r") as f:
            n, h, w, c = f["images"].shape
        per_chunk_old = max(1, (1 << 20) // (h * w * c))
        order = np.random.default_rng(0).permutation(n)[: args.items]
        print(
            f"{n} crops of {h}x{w}x{c}, gzip level 1, {args.items} shuffled items per run, "
            f"fastest of {args.repeats}"
        )
        print("| layout | file MiB | write images s | read all s | shuffled item ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, k in (
            (f"{per_chunk_old} crops per chunk (~1 MiB, before)", per_chunk_old),
            ("1 crop per chunk (now)", 1),
        ):
            path = tmp / f"chunks{k}.h5"
            write_s = min(_write(tmp / "crops.h5", path, k) for _ in range(args.repeats))
            read_all = _best(lambda p=path: read_crop_store(p), args.repeats)
            ds = CropDataset(path)
            item = _best(lambda ds=ds: [ds[int(i)] for i in order], args.repeats) / len(order)
            ds.close()
            print(
                f"| {name} | {path.stat().st_size / 2**20:.1f} | {write_s:.2f} | {read_all:.2f} | "
                f"{item * 1e3:.3f} |"
            )


if __name__ == "__main__":
    main()
