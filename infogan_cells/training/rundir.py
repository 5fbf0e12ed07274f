"""The run directory's files other than the final network: resume state, stats, sample sheets."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from infogan_cells._io import atomic_path, write_text_atomic
from infogan_cells.config import LatentSpec, TrainConfig, dump_config
from infogan_cells.errors import InputError
from infogan_cells.model.latent import Latent, latent_grid, sample_latent, to_input
from infogan_cells.model.networks import Generator

log = logging.getLogger(__name__)

RESUME_NAME = "resume.pt"
STATS_NAME = "stats.jsonl"
RESUME_FORMAT = "infogan-cells/resume"
GRID_STEPS = 8  # columns per continuous-code sweep in the sample grids


def run_identity(config: TrainConfig, seed: int) -> dict:
    """What makes two runs the same run: the training config (as YAML) and the seed."""
    return {"train_config": dump_config(config), "seed": int(seed)}


def check_same_run(path: Path, found: dict, want: dict) -> None:
    if found.get("seed") != want["seed"] or found.get("train_config") != want["train_config"]:
        raise InputError(
            f"{path}: belongs to a run with a different training config or seed; "
            "use a new run directory (or delete this one) to train with these settings"
        )


@dataclasses.dataclass
class ResumeState:
    """Everything an interrupted run needs to go on as if it had not stopped: weights, optimisers,
    RNG states, counters, the learned prior and the open tick's sums. ``resume.pt`` holds it as a
    plain dict (``torch.load(weights_only=True)`` reads it), tagged with :data:`RESUME_FORMAT`."""

    train_config: str
    seed: int
    device_type: str
    cur_nimg: int
    n_steps: int
    seconds: float
    G: dict
    D: dict
    G_ema: dict | None
    opt_G: dict
    opt_D: dict
    latent_rng: torch.Tensor
    data_rng: torch.Tensor
    prior: list[torch.Tensor]
    tick_sums: dict[str, torch.Tensor]
    tick_steps: int
    neighbours: torch.Tensor | None = None  # the pair term's neighbours once mined from D's features
    snapshots: list[dict] = dataclasses.field(default_factory=list)  # generator_snapshots kept so far

    def save(self, path: Path) -> None:
        """Write the state atomically (CPU tensors: a run may resume on another device)."""
        state = {"format": RESUME_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        state["prior"] = [p.cpu() for p in self.prior]
        state["tick_sums"] = {k: v.cpu() for k, v in self.tick_sums.items()}
        state["neighbours"] = None if self.neighbours is None else self.neighbours.cpu()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: Path, identity: dict) -> ResumeState:
        """Read ``path``; refuse a file that is not a resume state or belongs to another run."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputError(
                f"{path}: unreadable resume state ({type(err).__name__}); delete it to start over"
            ) from None
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise InputError(f"{path}: not an infogan-cells resume state")
        check_same_run(path, state, identity)
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls) if f.name in state})


def snapshot_points(total_images: int, n: int) -> list[int]:
    """Images seen at which the generator is kept for an ensemble of ``n`` (the final one is the
    n-th): evenly spaced over training's second half, from its middle (``n`` 4: 1/2, 2/3, 5/6)."""
    return [total_images * (n - 1 + i) // (2 * (n - 1)) for i in range(n - 1)]


def write_stats(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_stats(path: Path, up_to: int) -> list[dict]:
    """The stats records of ``path`` up to ``up_to`` images seen (those a resumed run keeps)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["images_seen"] <= up_to]


def grid_latent(spec: LatentSpec, seed: int) -> tuple[Latent, int]:
    """The fixed latent grid of the sample sheets: rows = categories of the first code, columns =
    a sweep of each continuous code in turn (same z per row), or random z when there are none."""
    if spec.n_continuous == 0:
        g = torch.Generator().manual_seed(seed)
        n_rows = spec.categorical[0] if spec.categorical else 1
        lat = sample_latent(spec, n_rows * GRID_STEPS, generator=g)
        if spec.categorical:
            lat.cat[:, 0] = torch.arange(n_rows).repeat_interleave(GRID_STEPS)
        return lat, GRID_STEPS
    panels = [
        latent_grid(spec, n_steps=GRID_STEPS, code=j, generator=torch.Generator().manual_seed(seed))
        for j in range(spec.n_continuous)
    ]
    n_rows = len(panels[0]) // GRID_STEPS

    def rows(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.reshape(n_rows, GRID_STEPS, -1) for x in t], dim=1).reshape(-1, t[0].shape[1])

    lat = Latent(rows([p.z for p in panels]), rows([p.cat for p in panels]), rows([p.cont for p in panels]))
    return lat, GRID_STEPS * spec.n_continuous


def save_snapshot(
    run_dir: Path,
    G: Generator,
    grid: Latent,
    n_cols: int,
    spec: LatentSpec,
    cur_nimg: int,
    records: list[dict],
    device: torch.device,
) -> None:
    from infogan_cells.report import plots

    was_training = G.training
    G.eval()
    with torch.no_grad():
        x = G(to_input(spec, grid.to(device))).float().cpu().numpy()
    G.train(was_training)
    kimg = cur_nimg // 1000
    scale = max(1, 64 // x.shape[-1])
    plots.save_grid(run_dir / f"samples-{kimg:06d}.png", x, n_cols, scale=scale, group_cols=GRID_STEPS)
    frames = sorted(p for p in run_dir.glob("samples-*.png") if int(p.stem.split("-")[1]) <= kimg)
    plots.save_gif(run_dir / "samples.gif", frames)
    if records:
        plots.plot_losses(run_dir / "loss.png", records)
