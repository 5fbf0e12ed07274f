"""Put this checkout's ``infogan_cells`` first on ``sys.path``, so the jobs run the code beside
the Snakefile, also inside the conda environments of ``workflow/envs`` (``--sdm conda``), which
hold the package's dependencies but not the package. Snakemake puts this folder on the path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
