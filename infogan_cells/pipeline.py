"""Glue for the Snakemake scripts: logging to the rule's log, torch's threads, the typed config.

Each script in ``workflow/scripts`` is a few lines: ``with stage(snakemake) as cfg:`` and one
package call. A user's mistake (``InputError``) is written to the log as one line and the job
fails with exit status 1, without a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from infogan_cells.config import Config, from_mapping
from infogan_cells.errors import InputError
from infogan_cells.progress import use_bars


@contextlib.contextmanager
def stage(smk: Any) -> Iterator[Config]:
    """Set up logging to ``smk.log[0]`` and CPU threads; yield the typed config."""
    log_path = smk.log[0] if len(smk.log) else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    use_bars(False)  # jobs share the terminal and each has its log: progress as plain lines
    # OMP_NUM_THREADS and the BLAS variables are set by workflow/scripts/_checkout.py, before
    # numpy and torch are imported (they read them then); torch's own count is set here.
    threads = max(1, int(getattr(smk, "threads", 1) or 1))
    if "torch" in sys.modules or _wants_torch(smk):
        import torch

        torch.set_num_threads(threads)
    log = logging.getLogger(f"infogan_cells.pipeline.{smk.rule}")
    try:
        yield from_mapping(Config, smk.config)
    except InputError as err:
        log.error("%s", err)
        sys.exit(1)


def _wants_torch(smk: Any) -> bool:
    return smk.rule in {"train", "analyse", "synthesise_shard"}
