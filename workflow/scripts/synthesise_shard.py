"""Snakemake wrapper: synthesise one shard with the run chosen by compare_seeds."""

import json
from pathlib import Path

import _checkout  # noqa: F401  (this checkout's infogan_cells)

from infogan_cells.pipeline import stage
from infogan_cells.synthesis.synthesise import synthesise

smk = snakemake  # noqa: F821
with stage(smk) as cfg:
    chosen = json.loads(Path(smk.input.choice).read_text())["chosen"]
    run_dir = Path(f"results/train/{chosen}")
    synthesise(
        run_dir,
        smk.output.shard,
        cfg.synthesis,
        shard=(int(smk.wildcards.shard), int(smk.wildcards.n)),
        overwrite=True,
        device=cfg.device,
        category_map=Path(f"results/analyse/{chosen}/category_map.csv"),
    )
