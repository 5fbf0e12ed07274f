"""Snakemake wrapper: join the shards into the master file and write per-category TIFF stacks."""

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.pipeline import stage
from infogan_cells.synthesis.gather import gather

smk = snakemake  # noqa: F821
with stage(smk) as cfg:
    gather(
        list(smk.input.shards),
        smk.output.master,
        tiff_dir=smk.output.tiff if cfg.synthesis.tiff else None,
        overwrite=True,
    )
    Path(smk.output.tiff).mkdir(parents=True, exist_ok=True)  # empty when synthesis.tiff is false
