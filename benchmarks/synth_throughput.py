"""Synthesis throughput and memory: end to end against the generator alone, and peak RSS against N.

Uses the default generator (64 px, 3 channels, width 64, the default latent space), randomly
initialised: speed does not depend on training.

    .venv/bin/python benchmarks/synth_throughput.py throughput --n 1024 --repeat 5
    .venv/bin/python benchmarks/synth_throughput.py rss --n 10000 --n 200000

``throughput`` times, in one process, alternately, (a) the generator's forward passes alone,
run exactly as synthesis runs them (micro-batches of ``micro_batch`` rows, one single-threaded
pass per worker thread) and (b) ``synthesise`` end to end (latents + forward + uint8 + HDF5
write); the goal is (b) >= 0.9 (a). It reports images per wall-clock second and per CPU-second
of the process: on a machine shared with other jobs the wall-clock ratio swings with their
load, the CPU-time ratio much less (and equals the wall-clock one on a dedicated machine whose
cores the synthesis keeps busy). ``rss`` runs ``synthesise`` for each N in a fresh subprocess and reads its peak
resident set size (``ru_maxrss``); the goal is the largest N within 10% of the smallest.
Results are written down in docs/benchmarks.md, with the machine's load (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from infogan_cells.config import LatentSpec, SynthConfig
from infogan_cells.model.checkpoint import save_network
from infogan_cells.model.networks import Discriminator, Generator, init_weights
from infogan_cells.synthesis.generate import generate
from infogan_cells.synthesis.synthesise import synthesise


def make_run(folder: Path) -> Path:
    spec = LatentSpec()
    G, D = (
        Generator(spec, img_size=64, channels=3, width=64),
        Discriminator(spec, img_size=64, channels=3, width=64),
    )
    init_weights(G)
    init_weights(D)
    save_network(
        folder / "network-final.pt",
        G=G,
        D=D,
        G_ema=G,
        meta={"channel_names": ["red", "green", "blue"], "img_size": 64},
    )
    return folder


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (less sensitive than wall time to
    other people's jobs on a shared machine)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def forward_alone(run: Path, n: int, micro_batch: int) -> tuple[float, float]:
    """Images per second and per CPU-second of the generator's forward passes alone, run as
    synthesis runs them on the CPU (same micro-batches, one single-threaded pass per worker)."""
    from infogan_cells.model.checkpoint import load_generator

    G, spec, _ = load_generator(run, device="cpu")
    workers = torch.get_num_threads()
    x = torch.randn(micro_batch, spec.input_dim, generator=torch.Generator().manual_seed(0))
    index = torch.arange(micro_batch).numpy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            list(pool.map(lambda _: generate(G, x, index, micro_batch, torch.device("cpu")), range(workers)))
            t, c = time.perf_counter(), cpu_seconds()
            passes = -(-n // micro_batch)
            list(pool.map(lambda _: generate(G, x, index, micro_batch, torch.device("cpu")), range(passes)))
            n = passes * micro_batch
            return n / (time.perf_counter() - t), n / (cpu_seconds() - c)
    finally:
        torch.set_num_threads(threads)


def end_to_end(run: Path, out: Path, config: SynthConfig) -> tuple[float, float]:
    """Images per second and per CPU-second of ``synthesise`` (latents, forward, uint8, HDF5)."""
    t, c = time.perf_counter(), cpu_seconds()
    synthesise(run, out, config, overwrite=True, device="cpu")
    return config.n / (time.perf_counter() - t), config.n / (cpu_seconds() - c)


def cmd_throughput(args: argparse.Namespace) -> None:
    config = SynthConfig(n=args.n[0], compression=args.compression)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run")
        print(
            f"# {load()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"N = {config.n} per timing, batch_size {config.batch_size}, micro_batch {config.micro_batch}, "
            f"compression {config.compression}"
        )
        wall, cpu = [], []
        for rep in range(args.repeat):  # alternate, so a change in the machine's load hits both
            fwd = forward_alone(run, config.n, config.micro_batch)
            e2e = end_to_end(run, Path(tmp) / "synth.h5", config)
            size = (Path(tmp) / "synth.h5").stat().st_size
            wall.append(e2e[0] / fwd[0])
            cpu.append(e2e[1] / fwd[1])
            print(
                f"repeat {rep}: forward alone {fwd[0]:.1f} images/s ({fwd[1]:.1f} per CPU-s), end to end "
                f"{e2e[0]:.1f} images/s ({e2e[1]:.1f} per CPU-s); ratio {wall[-1]:.3f} wall, {cpu[-1]:.3f} "
                f"CPU; file {size / 2**20:.1f} MiB"
            )
        print(
            f"median ratio end to end / forward alone: {statistics.median(wall):.3f} wall clock, "
            f"{statistics.median(cpu):.3f} CPU time ({args.repeat} alternating repeats)"
        )
        print(f"# {load()}")


def cmd_rss(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        make_run(Path(tmp) / "run")
        print(f"# {load()}; torch {torch.__version__}; compression {args.compression}")
        results = []
        for n in args.n:
            cmd = [
                sys.executable,
                __file__,
                "_child",
                "--n",
                str(n),
                "--compression",
                args.compression,
                "--dir",
                tmp,
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.append(r)
            print(
                f"N = {n}: peak RSS {r['maxrss_mib']:.1f} MiB, {r['images_per_s']:.1f} images/s, "
                f"file {r['file_mib']:.1f} MiB  [{load()}]"
            )
        base = results[0]["maxrss_mib"]
        for r in results[1:]:
            print(f"N = {r['n']} vs N = {results[0]['n']}: peak RSS x{r['maxrss_mib'] / base:.3f}")


def cmd_child(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    out = folder / f"synth-{args.n[0]}.h5"
    rate, _ = end_to_end(folder / "run", out, SynthConfig(n=args.n[0], compression=args.compression))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    size = out.stat().st_size / 2**20
    out.unlink()
    print(json.dumps({"n": args.n[0], "maxrss_mib": rss, "images_per_s": rate, "file_mib": size}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["throughput", "rss", "_child"])
    p.add_argument("--n", type=int, action="append", help="images (repeatable for rss)")
    p.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "blosc", "none"])
    p.add_argument("--repeat", type=int, default=5, help="throughput: alternating repeats")
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.n = args.n or ([1024] if args.what == "throughput" else [10_000, 200_000])
    {"throughput": cmd_throughput, "rss": cmd_rss, "_child": cmd_child}[args.what](args)


if __name__ == "__main__":
    main()
