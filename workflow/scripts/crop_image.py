"""Snakemake wrapper: crop the cells of one source image (infogan_cells.preprocess.crop)."""

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.config import dump_config
from infogan_cells.pipeline import stage
from infogan_cells.preprocess.crop import crop

smk = snakemake  # noqa: F821
with stage(smk) as cfg:
    source = smk.params.source
    crop(
        smk.input.annotations,
        smk.output.part,
        cfg.input,
        cfg.crop,
        images=None if source is None else [source],
        config_text=dump_config(cfg),
        montages=False,
    )
