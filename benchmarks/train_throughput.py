"""Training speed: our loop against a plain PyTorch loop, the arithmetic rate, and time to accuracy.

In one run:

1. **Throughput.** Images/s of ``infogan_cells.training.loop.train`` itself (read from its stats.jsonl,
   first tick dropped as warm-up) and of a plain reference loop: a ``DataLoader`` with per-sample
   transforms, fp32 eager, default Adam, the same networks, losses and batch size. Both do the
   same math (InfoGAN losses, random flips); ours is also timed with the whole digits preset
   (DiffAugment and the IIC term add work per image).
2. **Arithmetic rate.** FLOPs per image of our step, counted with
   ``torch.utils.flop_counter.FlopCounterMode``, times our images/s, beside the fp32 matmul rate
   of this machine measured in the same run (square GEMMs, same thread count).
3. **Time to accuracy** (``--tta``): wall-clock training seconds until Q's categorical code
   reaches ``--goal`` Hungarian accuracy on scikit-learn's digits (32 px), ours with
   config/digits.yaml vs the plain loop with the textbook recipe (the InfoGAN paper's widths and
   learning rates, z = 62, batch 64). Evaluation time is not counted.

CPU (the figures in docs/benchmarks.md; the digits preset reaches 0.80, k-means' level, not 0.90)::

    python benchmarks/train_throughput.py --threads 1 --seconds 30 --tta --goal 0.80 --tta-budget-s 900 --tta-every 10240

GPU (64 px, batch 256)::

    python benchmarks/train_throughput.py --device cuda --size 64 --channels 3 --batch 256 --width 64

Results are printed as a table and appended to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infogan_cells.analysis.clustering import hungarian_accuracy  # noqa: E402
from infogan_cells.config import AugmentConfig, LatentSpec, TrainConfig, load_config, parse_set_option  # noqa: E402
from infogan_cells.data.store import read_crop_store, write_crop_store  # noqa: E402
from infogan_cells.model.checkpoint import resolve_device  # noqa: E402
from infogan_cells.model.latent import sample_latent, to_input  # noqa: E402
from infogan_cells.model.losses import InfoLoss  # noqa: E402
from infogan_cells.model.networks import Discriminator, Generator, init_weights  # noqa: E402
from infogan_cells.training import loop as train_mod  # noqa: E402
from infogan_cells.training.step import InfoGANStep, build_networks, build_optimizers  # noqa: E402

log = logging.getLogger("train_throughput")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_store(path: Path, n: int, size: int, channels: int) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    # One whole-image box per crop, unlabelled, every crop passing QC.
    columns = ["source_image", "source_index", "min_row", "min_col", "max_row", "max_col"]
    boxes = pd.DataFrame([("random", i, 0, 0, size, size) for i in range(n)], columns=columns)
    obs = boxes.assign(label="", qc_pass=True, qc_reason="")
    write_crop_store(path, images, obs, [f"c{i}" for i in range(channels)], csv=False)
    return path


# --------------------------------------------------------------------------------------
# The plain reference loop


class PerSampleDataset(torch.utils.data.Dataset):
    """What a textbook loop does: one crop at a time, transformed in Python (ToTensor + Normalize)."""

    def __init__(self, images: np.ndarray, flip: bool = False):
        self.images, self.flip = images, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div(255)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - 0.5) / 0.5


class PlainInfoGAN:
    """A plain InfoGAN loop: BCE, the info loss added to D's and G's losses (openai/InfoGAN), Adam
    with its defaults, fp32 eager, ``.item()`` logging every step."""

    def __init__(
        self,
        spec: LatentSpec,
        size: int,
        channels: int,
        width: int,
        lr_g: float,
        lr_d: float,
        device: torch.device,
        seed: int = 0,
    ):
        torch.manual_seed(seed)  # the textbook way (this script is not library code)
        self.spec, self.device = spec, device
        self.G = Generator(spec, img_size=size, channels=channels, width=width).to(device)
        self.D = Discriminator(spec, img_size=size, channels=channels, width=width).to(device)
        init_weights(self.G)
        init_weights(self.D)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=(0.5, 0.999))
        self.info = InfoLoss(1.0, 0.1)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.log: list[tuple[float, float]] = []

    def step(self, real: torch.Tensor) -> None:
        real = real.to(self.device)
        b = real.shape[0]
        latent = sample_latent(self.spec, b, generator=torch.default_generator, device=self.device)
        fake = self.G(to_input(self.spec, latent))
        d_real, _ = self.D(real)
        d_fake, q_fake = self.D(fake.detach())
        loss_D = (
            self.bce(d_real, torch.ones(b, device=self.device))
            + self.bce(d_fake, torch.zeros(b, device=self.device))
            + self.info(q_fake, latent)["Loss/Q/info"]
        )
        self.opt_D.zero_grad()
        loss_D.backward()
        self.opt_D.step()
        d_fake, q_fake = self.D(fake)
        loss_G = (
            self.bce(d_fake, torch.ones(b, device=self.device)) + self.info(q_fake, latent)["Loss/Q/info"]
        )
        self.opt_G.zero_grad()
        loss_G.backward()
        self.opt_G.step()
        self.log.append((loss_D.item(), loss_G.item()))


def plain_throughput(
    images: np.ndarray, spec: LatentSpec, width: int, batch: int, device: torch.device, seconds: float
) -> float:
    size, channels = images.shape[1], images.shape[3]
    loop = PlainInfoGAN(spec, size, channels, width, 1e-3, 2e-4, device)
    loader = torch.utils.data.DataLoader(
        PerSampleDataset(images, flip=True), batch_size=batch, shuffle=True, drop_last=True
    )
    n, t0, warm = 0, None, 3
    while True:
        for real in loader:
            loop.step(real)
            if warm:
                warm -= 1
                if not warm:
                    _sync(device)
                    t0 = time.perf_counter()
                continue
            n += batch
            if time.perf_counter() - t0 > seconds:
                _sync(device)
                return n / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------
# Ours: the real train() loop


def ours_throughput(
    store: Path, config: TrainConfig, device: str, seconds: float, rate_guess: float, work: Path
) -> float:
    """Images/s from train()'s own stats (ticks after the first), for about ``seconds``."""
    total = int(max(4, seconds * rate_guess / config.batch_size)) * config.batch_size
    tick = max(config.batch_size, total // 5 // config.batch_size * config.batch_size)
    cfg = dataclasses.replace(
        config, total_images=total, tick_images=tick, snapshot_images=10 * total, checkpoint_images=10 * total
    )
    run = train_mod.train(store, work / f"ours-{time.monotonic_ns()}", cfg, seed=0, device=device)
    recs = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    ticks = [
        (b["images_seen"] - a["images_seen"], b["images_per_s"]) for a, b in zip(recs, recs[1:], strict=False)
    ]
    return sum(n for n, _ in ticks) / sum(n / rate for n, rate in ticks)


def step_flops(config: TrainConfig, size: int, channels: int, device: torch.device) -> float:
    """FLOPs per image of one InfoGANStep (forward and backward of D and G, as counted by torch)."""
    spec = config.latent
    G, D = build_networks(spec, size, channels, config, torch.Generator().manual_seed(0))
    G.to(device)
    D.to(device)
    opt_G, opt_D = build_optimizers(G, D, config, device)
    step = InfoGANStep(G, D, opt_G, opt_D, spec, config, device)
    b = config.batch_size
    real = torch.rand(b, channels, size, size, device=device) * 2 - 1
    latent = sample_latent(spec, b, generator=torch.Generator().manual_seed(0), device=device)
    with FlopCounterMode(display=False) as fc:
        step(real, latent, generator=torch.Generator(device=device).manual_seed(0))
    return fc.get_total_flops() / b


def matmul_rate(device: torch.device, seconds: float = 3.0) -> float:
    """Sustained fp32 GEMM FLOP/s (TF32 off) at the best of a few square sizes."""
    best = 0.0
    sizes = (512, 1024, 2048) if device.type == "cpu" else (4096, 8192)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for n in sizes:
            a = torch.randn(n, n, device=device)
            b = torch.randn(n, n, device=device)
            torch.mm(a, b)
            _sync(device)
            k, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / len(sizes):
                torch.mm(a, b)
                k += 1
            _sync(device)
            best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return best


# --------------------------------------------------------------------------------------
# Time to accuracy on digits


class _Reached(Exception):
    pass


def _q_accuracy(D: Discriminator, x: torch.Tensor, labels: np.ndarray) -> float:
    D.eval()
    with torch.no_grad():
        pred = torch.cat(
            [D.q_head(D.trunk(x[i : i + 512])).cat_logits[0].argmax(1).cpu() for i in range(0, len(x), 512)]
        ).numpy()
    D.train()
    return hungarian_accuracy(labels, pred)


def ours_time_to_accuracy(
    store: Path, goal: float, budget_s: float, every: int, device: str, work: Path, seed: int
) -> dict:
    cfg = load_config(REPO / "config" / "digits.yaml").train
    cfg = dataclasses.replace(cfg, tick_images=every, checkpoint_images=every, snapshot_images=10**9)
    cs = read_crop_store(store)
    x = torch.from_numpy(cs.images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(resolve_device(device))
    curve = []

    def evaluate(path, state):  # replaces the resume write: evaluate, maybe stop; time not counted
        D = Discriminator(**D_kwargs)
        D.load_state_dict(state["D"])
        acc = _q_accuracy(D.to(x.device), x, cs.labels)
        curve.append((state["cur_nimg"], state["seconds"], acc))
        log.info("ours: %d images, %.0f s, acc %.3f", state["cur_nimg"], state["seconds"], acc)
        if acc >= goal or state["seconds"] > budget_s:
            raise _Reached

    D_kwargs = dict(
        spec=cfg.latent,
        img_size=cs.images.shape[1],
        channels=cs.images.shape[3],
        width=cfg.d_channels,
        spectral_norm=cfg.spectral_norm,
    )
    saved = train_mod._save_resume
    train_mod._save_resume = evaluate
    try:
        train_mod.train(store, work / f"tta-ours-{seed}", cfg, seed=seed, device=device)
    except _Reached:
        pass
    finally:
        train_mod._save_resume = saved
    return _tta_result("ours (config/digits.yaml)", curve, goal)


def plain_time_to_accuracy(
    store: Path, goal: float, budget_s: float, every: int, device: str, seed: int
) -> dict:
    dev = resolve_device(device)
    cs = read_crop_store(store)
    spec = LatentSpec(z_dim=62, categorical=[10], n_continuous=2)
    loop = PlainInfoGAN(spec, cs.images.shape[1], cs.images.shape[3], 64, 1e-3, 2e-4, dev, seed=seed)
    loader = torch.utils.data.DataLoader(
        PerSampleDataset(cs.images), batch_size=64, shuffle=True, drop_last=True
    )
    x = torch.from_numpy(cs.images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(dev)
    curve, n, secs = [], 0, 0.0
    while True:
        t0 = time.perf_counter()
        for real in loader:
            loop.step(real)
            n += real.shape[0]
            if n % every < real.shape[0]:
                _sync(dev)
                secs += time.perf_counter() - t0
                acc = _q_accuracy(loop.D, x, cs.labels)
                curve.append((n, secs, acc))
                log.info("plain: %d images, %.0f s, acc %.3f", n, secs, acc)
                if acc >= goal or secs > budget_s:
                    return _tta_result("plain loop, textbook recipe", curve, goal)
                t0 = time.perf_counter()
        _sync(dev)
        secs += time.perf_counter() - t0


def _tta_result(name: str, curve: list, goal: float) -> dict:
    hit = next(((n, s, a) for n, s, a in curve if a >= goal), None)
    best = max(curve, key=lambda c: c[2]) if curve else (0, 0.0, float("nan"))
    return {
        "loop": name,
        "goal": goal,
        "reached": hit is not None,
        "seconds": round(hit[1], 1) if hit else None,
        "images": hit[0] if hit else None,
        "best_acc": round(best[2], 4),
        "last": curve[-1] if curve else None,
        "curve": curve,
    }


# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, help="batch size (default: config/digits.yaml's)")
    p.add_argument("--width", type=int, help="G and D width (default: config/digits.yaml's)")
    set_help = "override of config/digits.yaml for our loop (e.g. train.compile=true)"
    p.add_argument("--set", action="append", default=[], dest="set_", metavar="KEY=VALUE", help=set_help)
    p.add_argument("--seconds", type=float, default=30.0, help="timing window per loop")
    p.add_argument("--tta", action="store_true", help="also measure time to the digits accuracy goal")
    p.add_argument("--goal", type=float, default=0.90)
    p.add_argument(
        "--tta-budget-s", type=float, default=1800.0, help="give up after this many training seconds"
    )
    p.add_argument("--tta-every", type=int, default=5120, help="images between accuracy checks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "throughput")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("infogan_cells").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    cfg = load_config(REPO / "config" / "digits.yaml", [parse_set_option(s) for s in args.set_]).train
    overrides = {"batch_size": args.batch} if args.batch else {}
    if args.width:
        overrides.update(g_channels=args.width, d_channels=args.width)
    preset = dataclasses.replace(cfg, **overrides)
    # the same math as the plain loop: InfoGAN losses, random flips, no DiffAugment, no IIC term
    off = AugmentConfig(rot90=False, flip=False, shift=0)
    cfg = dataclasses.replace(
        preset, augment=dataclasses.replace(off, flip=True), diff_augment=off, lambda_pair_mi=0.0
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "channels": args.channels,
        "batch": cfg.batch_size,
        "width": cfg.g_channels,
        "torch": str(torch.__version__),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = random_store(work / "random.h5", 4096, args.size, args.channels)
        images = read_crop_store(store).images
        result["matmul_flops"] = matmul_rate(dev)  # again at the end: the best of the two (a shared machine)
        result["step_flops_per_image"] = step_flops(cfg, args.size, args.channels, dev)
        result["plain_images_per_s"] = plain_throughput(
            images, cfg.latent, cfg.g_channels, cfg.batch_size, dev, args.seconds
        )
        guess = result["plain_images_per_s"] * 1.5
        result["ours_images_per_s"] = ours_throughput(store, cfg, args.device, args.seconds, guess, work)
        result["preset_images_per_s"] = ours_throughput(store, preset, args.device, args.seconds, guess, work)
        result["preset_step_flops_per_image"] = step_flops(preset, args.size, args.channels, dev)
        result["matmul_flops"] = max(result["matmul_flops"], matmul_rate(dev))
        result["ours_flops"] = result["ours_images_per_s"] * result["step_flops_per_image"]
        result["ours_fraction_of_matmul"] = result["ours_flops"] / result["matmul_flops"]
        result["speedup"] = result["ours_images_per_s"] / result["plain_images_per_s"]
        if args.tta:
            from clustering_agreement import build_digits

            digits = build_digits(work / "digits.h5")
            result["tta_ours"] = ours_time_to_accuracy(
                digits, args.goal, args.tta_budget_s, args.tta_every, args.device, work, args.seed
            )
            result["tta_plain"] = plain_time_to_accuracy(
                digits, args.goal, args.tta_budget_s, args.tta_every, args.device, args.seed
            )
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(
        f"device {result['device']} ({result['gpu'] or 'CPU'}), {result['threads']} threads, "
        f"{args.size} px x {args.channels} ch, batch {cfg.batch_size}, width {cfg.g_channels}"
    )
    print(f"  plain loop        {result['plain_images_per_s']:10.0f} images/s")
    print(f"  ours              {result['ours_images_per_s']:10.0f} images/s  ({result['speedup']:.2f}x)")
    print(f"  step FLOPs/image  {result['step_flops_per_image'] / 1e6:10.1f} MFLOP")
    print(
        f"  ours, whole preset (DiffAugment + IIC): {result['preset_images_per_s']:.0f} images/s, "
        f"{result['preset_step_flops_per_image'] / 1e6:.1f} MFLOP/image"
    )
    print(
        f"  ours arithmetic   {result['ours_flops'] / 1e9:10.2f} GFLOP/s = {100 * result['ours_fraction_of_matmul']:.0f}% "
        f"of fp32 matmul {result['matmul_flops'] / 1e9:.1f} GFLOP/s"
    )
    for key in ("tta_ours", "tta_plain"):
        if key in result:
            r = result[key]
            what = (
                f"{r['seconds']:.0f} s ({r['images']} images)"
                if r["reached"]
                else f"not reached (best {r['best_acc']:.3f})"
            )
            print(f"  time to acc {args.goal:.2f}: {r['loop']:32s} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
