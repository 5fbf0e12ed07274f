"""Snakemake wrapper: compare the seeds' analyses and pick one (label-free criterion)."""

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.analysis.seeds import compare_seeds
from infogan_cells.pipeline import stage

smk = snakemake  # noqa: F821
with stage(smk):
    compare_seeds([Path(m).parent for m in smk.input.metrics], Path(smk.output.index).parent)
