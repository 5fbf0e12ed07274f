"""Snakemake wrapper: join the per-image crop stores, run the set-wide QC, write montages."""

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.config import dump_config
from infogan_cells.pipeline import stage
from infogan_cells.preprocess.crop import merge_crops

smk = snakemake  # noqa: F821
with stage(smk) as cfg:
    merge_crops(
        list(smk.input.parts),
        smk.output.crops,
        cfg.crop,
        config_text=dump_config(cfg),
        montage_dir=smk.output.montages,
    )
