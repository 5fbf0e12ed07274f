"""Snakemake wrapper: generate the default smear images (infogan_cells.data.simulate)."""

from pathlib import Path

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.data.simulate import simulate_smears
from infogan_cells.pipeline import stage

with stage(snakemake) as cfg:  # noqa: F821
    simulate_smears(Path(snakemake.output.annotations).parent, cfg.simulate)  # noqa: F821
