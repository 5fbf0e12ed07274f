"""One-shot check of the CUDA paths, offline and time-boxed: run it once on a machine with a GPU.

Needs only Python with torch, numpy, h5py, pandas, scikit-image, tifffile, PyYAML and Pillow,
and this repository on ``PYTHONPATH`` (no pip, no Snakemake, no network)::

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR            # on a CUDA GPU (< 8 minutes)
    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR --cpu      # the same checks at toy sizes

Writes ``OUT_DIR/gpu_check.json`` (every figure) and ``OUT_DIR/gpu_check.md`` (a short table for
docs/benchmarks.md). Sections, each recorded as ok / failed (with the error) / skipped (out of time):

1. smoke: simulated smears -> crops -> the default config's training through a sample grid, a
   resume checkpoint, a kill, the resume, and the final save; again on one-channel crops
   (fused Adam with channels_last on a size-1 channel dimension);
2. host syncs per training step (CUDA's sync detector, and the call counter of infogan_cells.training.syncs);
3. training images/s at 64 px with the default widths, bf16 and fp32, torch.compile off and on,
   with peak memory; and the GPU preset's widths;
4. synthesis images/s into HDF5 with gzip and without compression, and the generator alone;
5. bit-identity of synthesis across batch sizes and shards.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import infogan_cells.training.loop as train_mod  # noqa: E402
from infogan_cells.config import CropConfig, InputConfig, SimulateConfig, SynthConfig, load_config  # noqa: E402
from infogan_cells.data.simulate import simulate_smears  # noqa: E402
from infogan_cells.data.store import read_crop_store, write_crop_store  # noqa: E402
from infogan_cells.model.latent import sample_latent_by_seed, to_input  # noqa: E402
from infogan_cells.preprocess.crop import crop  # noqa: E402
from infogan_cells.synthesis.gather import gather  # noqa: E402
from infogan_cells.synthesis.generate import generate  # noqa: E402
from infogan_cells.synthesis.synthesise import synthesise  # noqa: E402
from infogan_cells.training.data import Batches, load_crops  # noqa: E402
from infogan_cells.training.parts import advance, build_parts  # noqa: E402
from infogan_cells.training.syncs import HostSyncCounter  # noqa: E402


class Killed(Exception):
    pass


class Check:
    """Runs the sections in order within a time budget; records each one's figures or error."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.results: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, fn, *, needs_s: float) -> None:
        if self.left() < needs_s:
            self.results[name] = {
                "status": "skipped",
                "why": f"{self.left():.0f} s left, needs ~{needs_s:.0f} s",
            }
        else:
            t0 = time.monotonic()
            try:
                self.results[name] = {"status": "ok", **fn()}
            except Exception as err:  # a check reports its failure and the next one still runs
                self.results[name] = {
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=6),
                }
            self.results[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(
            f"[gpu_check] {name}: {self.results[name]['status']} ({self.results[name].get('seconds', 0)} s)",
            flush=True,
        )
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str))


def default_train(**kw):
    return dataclasses.replace(load_config(REPO / "config" / "config.yaml").train, **kw)


def make_crops(work: Path, n_images: int) -> Path:
    ann = simulate_smears(work / "smears", SimulateConfig(n_images=n_images))
    out = work / "crops.h5"
    crop(ann, out, InputConfig(path=str(ann)), CropConfig(), montages=False)
    return out


def one_channel(store: Path, out: Path) -> Path:
    cs = read_crop_store(store)
    write_crop_store(out, np.ascontiguousarray(cs.images[..., :1]), cs.obs, ["grey"], csv=False)
    return out


def smoke(store: Path, work: Path, dev: str, toy: bool, precision: str) -> dict:
    """Train through a grid, a checkpoint, a kill, the resume and the final save."""
    b = 32 if toy else 128
    config = default_train(
        total_images=8 * b,
        batch_size=b,
        tick_images=2 * b,
        snapshot_images=4 * b,
        checkpoint_images=3 * b,
        precision=precision,
    )
    run = work / f"smoke-{store.stem}-{precision}"
    save = train_mod._save_resume

    def save_then_die(path, state):
        save(path, state)
        raise Killed

    train_mod._save_resume = save_then_die
    try:
        try:
            train_mod.train(store, run, config, seed=0, device=dev)
            raise AssertionError("the run was not killed at its first checkpoint")
        except Killed:
            pass
    finally:
        train_mod._save_resume = save
    assert (run / "resume.pt").exists() and not (run / "network-final.pt").exists()
    train_mod.train(store, run, config, seed=0, device=dev)
    meta = torch.load(run / "network-final.pt", weights_only=True)["meta"]
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert meta["images_seen"] == config.total_images and all(
        np.isfinite(v) for r in stats for k, v in r.items() if k.startswith("Loss/")
    )
    return {
        "run": str(run),
        "images_seen": meta["images_seen"],
        "precision": meta["precision"],
        "samples": len(list(run.glob("samples-*.png"))),
        "last_tick": {
            k: round(v, 3)
            for k, v in stats[-1].items()
            if k in ("images_per_s", "Loss/D/adv", "Loss/G/adv", "Loss/Q/cat", "gpu_max_memory_mb")
        },
    }


def step_parts(config, crops_store: Path, dev: torch.device, img_size: int | None = None):
    """One turn of train()'s loop on ``dev`` (its own build_parts and advance), as a function."""
    crops = load_crops(crops_store, config, dev, torch.Generator().manual_seed(0))
    if img_size is not None and crops.img_size != img_size:
        raise ValueError(f"crops are {crops.img_size} px, wanted {img_size}")
    parts = build_parts(config, crops.img_size, crops.images.shape[1], dev, torch.Generator().manual_seed(0))
    gen = torch.Generator(device=dev).manual_seed(1)
    batches = Batches(crops, config, gen, torch.Generator(device=dev).manual_seed(2))
    prior = [torch.full((k,), 1.0 / k, device=dev) for k in config.latent.categorical]
    learned = config.prior == "learned"
    steps = iter(range(1 << 62))

    def one_step():
        return advance(parts, batches, prior, config, n_steps=next(steps), learned=learned, generator=gen)

    return one_step


def syncs(store: Path, dev: torch.device, toy: bool) -> dict:
    out = {}
    for name, extra in {"default": {}, "learned_prior": {"prior": "learned", "prior_warmup": 0.0}}.items():
        one_step = step_parts(default_train(batch_size=32 if toy else 128, **extra), store, dev)
        one_step()  # warm-up: allocations, cuDNN's autotuner
        n = 5
        with HostSyncCounter() as counter:
            for _ in range(n):
                one_step()
        entry = {"counted_calls_per_step": counter.total / n, "calls": counter.calls}
        if dev.type == "cuda":
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(n):
                        one_step()
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            msgs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
            entry["cuda_syncs_per_step"] = len(msgs) / n
            entry["cuda_sync_examples"] = sorted(set(m[:160] for m in msgs))[:5]
        out[name] = entry
    return out


def time_steps(one_step, dev: torch.device, batch: int, seconds: float, warmup: int) -> dict:
    for _ in range(warmup):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    t0, steps = time.perf_counter(), 0
    while True:
        one_step()
        steps += 1
        if steps % 10 == 0 or dev.type != "cuda":
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if time.perf_counter() - t0 >= seconds:
                break
    dt = time.perf_counter() - t0
    res = {"images_per_s": round(steps * batch / dt, 1), "steps": steps, "batch": batch}
    if dev.type == "cuda":
        res["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return res


def throughput(store: Path, dev: torch.device, toy: bool, check: Check) -> dict:
    out = {}
    seconds = 1.0 if toy else 8.0
    combos = [
        ("bf16", False, 128),
        ("fp32", False, 128),
        ("bf16", False, 1024),
        ("fp32", False, 1024),
        ("bf16", True, 1024),
        ("fp32", True, 1024),
        ("bf16", False, 4096),
    ]
    if toy:
        combos = [("bf16", False, 16), ("fp32", False, 16), ("fp32", True, 16)]
    for precision, compiled, batch in combos:
        key = f"default_widths/{precision}/compile={compiled}/batch={batch}"
        if check.left() < (150 if compiled and not toy else 40):
            out[key] = {"status": "skipped (time)"}
            continue
        try:
            config = default_train(batch_size=batch, precision=precision, compile=compiled)
            one_step = step_parts(config, store, dev, img_size=64)
            out[key] = time_steps(one_step, dev, batch, seconds, warmup=3 if not compiled else 5)
        except Exception as err:
            out[key] = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(f"[gpu_check]   {key}: {out[key]}", flush=True)
        check.save()
    gpu = load_config(REPO / "config" / "gpu.yaml").train
    if check.left() > 40:
        b = 16 if toy else gpu.batch_size
        config = dataclasses.replace(gpu, batch_size=b, precision="bf16" if dev.type == "cuda" else "fp32")
        out[f"gpu_preset/{config.precision}/batch={b}"] = time_steps(
            step_parts(config, store, dev, img_size=64), dev, b, seconds, warmup=3
        )
    nih = load_config(REPO / "config" / "nih_cells.yaml").train
    best = max((v.get("images_per_s", 0) for k, v in out.items() if k.endswith("batch=128")), default=0)
    if best:
        out["estimate_1M_images_nih_preset_s"] = round(1e6 / best, 1) if nih.batch_size == 128 else None
    return out


def synthesis(run: Path, work: Path, dev: str, toy: bool) -> dict:
    n = 2048 if toy else 200_000
    bs, mb = (512, 64) if toy else (8192, 1024)
    out = {"n": n, "batch_size": bs, "micro_batch": mb}
    for compression in ("none", "gzip"):
        config = SynthConfig(n=n, batch_size=bs, micro_batch=mb, compression=compression)
        path = work / f"synth-{compression}.h5"
        t0 = time.perf_counter()
        synthesise(run, path, config, device=dev)
        out[f"hdf5_{compression}_images_per_s"] = round(n / (time.perf_counter() - t0), 1)
        out[f"hdf5_{compression}_mib"] = round(path.stat().st_size / 2**20, 1)
    from infogan_cells.model.checkpoint import load_generator

    G, spec, _ = load_generator(run, device=dev)
    index = np.arange(n, dtype=np.int64)
    device = torch.device(dev)
    t0 = time.perf_counter()
    for a in range(0, n, bs):
        lat = sample_latent_by_seed(spec, index[a : a + bs])
        generate(G, to_input(spec, lat), index[a : a + bs], mb, device)
    out["generator_only_images_per_s"] = round(n / (time.perf_counter() - t0), 1)
    out["end_to_end_over_generator_gzip"] = round(
        out["hdf5_gzip_images_per_s"] / out["generator_only_images_per_s"], 3
    )
    out["compression_threads"] = __import__(
        "infogan_cells.synthesis.writers", fromlist=["x"]
    ).compression_threads()
    return out


def identity(run: Path, work: Path, dev: str, toy: bool) -> dict:
    n = 1000 if toy else 20_000
    a = work / "ident-a.h5"
    synthesise(run, a, SynthConfig(n=n, batch_size=256, micro_batch=64, compression="none"), device=dev)
    shards = []
    for i in range(3):
        p = work / f"ident-b-{i}.h5"
        synthesise(
            run,
            p,
            SynthConfig(n=n, batch_size=1000, micro_batch=64, compression="gzip"),
            shard=(i, 3),
            device=dev,
        )
        shards.append(p)
    b = gather(shards, work / "ident-b.h5")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ia, ib = fa["images"][...], fb["images"][...]
        same_latents = np.array_equal(fa["latent/z"][...], fb["latent/z"][...])
    differing = int((ia != ib).reshape(n, -1).any(1).sum())
    return {
        "n": n,
        "bit_identical": bool(differing == 0 and same_latents),
        "samples_differing": differing,
        "max_abs_difference": int(np.abs(ia.astype(int) - ib.astype(int)).max()),
    }


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = [
        f"GPU check on {env.get('device_name', '?')} (torch {env.get('torch')}, CUDA {env.get('cuda')}), "
        f"{env.get('date')}",
        "",
        "| check | result |",
        "| --- | --- |",
    ]
    for name, res in results.items():
        if name == "environment":
            continue
        status = res.get("status", "?")
        figures = {k: v for k, v in res.items() if k not in ("status", "traceback", "seconds", "run")}
        text = "; ".join(f"{k}: {json.dumps(v, default=str)}" for k, v in figures.items())
        lines.append(f"| {name} ({status}, {res.get('seconds', 0)} s) | {text[:1500]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--cpu", action="store_true", help="run every check on the CPU at toy sizes")
    ap.add_argument("--budget-s", type=float, default=450.0, help="time box for all checks (default 450)")
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --cpu for the toy-size run)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "cpu" if args.cpu else "cuda"
    toy = args.cpu
    check = Check(args.out, args.budget_s)
    check.results["environment"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or "cpu",
        "bf16_supported": bool(torch.cuda.is_bf16_supported()) if dev == "cuda" else True,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "toy": toy,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = make_crops(work, 2 if toy else 12)
        grey = one_channel(store, work / "grey.h5")
        runs = {}

        def do_smoke(s, precision):
            res = smoke(s, work, dev, toy, precision)
            runs.setdefault("rgb", Path(res["run"]))
            return res

        precisions = ["fp32", "bf16"] if toy else ["bf16"]
        for precision in precisions:
            check.section(f"smoke_rgb_{precision}", lambda p=precision: do_smoke(store, p), needs_s=20)
            check.section(
                f"smoke_one_channel_{precision}",
                lambda p=precision: smoke(grey, work, dev, toy, p),
                needs_s=20,
            )
        check.section("host_syncs", lambda: syncs(store, torch.device(dev), toy), needs_s=20)
        check.section(
            "train_throughput", lambda: throughput(store, torch.device(dev), toy, check), needs_s=60
        )
        if "rgb" in runs:
            check.section("synthesis", lambda: synthesis(runs["rgb"], work, dev, toy), needs_s=40)
            check.section("synthesis_identity", lambda: identity(runs["rgb"], work, dev, toy), needs_s=20)
    (args.out / "gpu_check.md").write_text(markdown(check.results))
    check.save()
    failed = [k for k, v in check.results.items() if v.get("status") == "failed"]
    print(f"[gpu_check] wrote {args.out / 'gpu_check.json'}; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
