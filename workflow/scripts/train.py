"""Snakemake wrapper: train one InfoGAN run (infogan_cells.training.loop)."""

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.pipeline import stage
from infogan_cells.training.loop import train

smk = snakemake  # noqa: F821
with stage(smk) as cfg:
    train(
        smk.input.crops,
        Path(smk.output.network).parent,
        cfg.train,
        seed=int(smk.wildcards.seed),
        device=cfg.device,
        progress=True,
        resolved_config=cfg,
    )
