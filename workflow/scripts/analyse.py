"""Snakemake wrapper: analyse one run's latent factors and write its report."""

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.analysis.analyse import analyse
from infogan_cells.pipeline import stage

smk = snakemake  # noqa: F821
with stage(smk) as cfg:
    analyse(
        Path(smk.input.network).parent,
        smk.input.crops,
        Path(smk.output.metrics).parent,
        cfg.analyse,
        device=cfg.device,
    )
