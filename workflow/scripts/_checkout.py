"""Put this checkout's ``infogan_cells`` first on ``sys.path``, so the jobs run the code beside
the Snakefile, also inside the conda environments of ``workflow/envs`` (``--sdm conda``), which
hold the package's dependencies but not the package. Snakemake puts this folder on the path.

Also size the OpenMP and BLAS thread pools to the rule's ``threads:``. Those pools read their
variables once, when numpy or torch is first imported, so this runs before the package (every
script imports this module first); :func:`infogan_cells.pipeline.stage` then sets torch's own
count. A variable the user exported is left alone."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def thread_variables(threads: object) -> dict[str, str]:
    """The environment that caps the numeric libraries' thread pools at ``threads`` (>= 1)."""
    n = str(max(1, int(threads or 1)))
    return {name: n for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


_smk = getattr(sys.modules.get("__main__"), "snakemake", None)  # Snakemake's script preamble sets it
if _smk is not None:
    if "numpy" in sys.modules or "torch" in sys.modules:
        raise RuntimeError("import _checkout before numpy or torch: thread settings would not take effect")
    for _name, _value in thread_variables(getattr(_smk, "threads", 1)).items():
        os.environ.setdefault(_name, _value)
