"""What each continuous code changes in the generated images of trained runs.

For each run directory (or ``network-final.pt``) given, the analysis stage's traversal is run
(every continuous code swept from -r to r in every category, the same z throughout) and the
features with the strongest Spearman rho are printed per code; ``--feature`` prints that feature's
rho for every code instead. The features are the analysis's (``codes.csv``): morphology with
``slant`` and ``stroke_width``, and ``total_<channel>``, ranked within each category.

    python benchmarks/code_meaning.py RUN_DIR [RUN_DIR ...] [--channels ink] [--top 4]

Results are printed, one line per run and code; ``--out`` also writes every rho to a CSV.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infogan_cells.analysis.codes import traverse  # noqa: E402
from infogan_cells.config import AnalyseConfig  # noqa: E402
from infogan_cells.model.checkpoint import load_generator  # noqa: E402


def code_table(run: Path, channels: list[str] | None) -> pd.DataFrame:
    """The traversal's (code, feature, rho, p) table of one run, on the CPU."""
    path = run / "network-final.pt" if run.is_dir() else run
    G, spec, meta = load_generator(path, ema=True)
    names = channels or meta.get("channel_names")
    n_cat = spec.categorical[0] if spec.categorical else 1
    with tempfile.TemporaryDirectory() as tmp:
        return traverse(G, spec, n_cat, AnalyseConfig(), Path(tmp), torch.device("cpu"), list(names))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--channels", nargs="*", help="channel names (default: the run's own)")
    ap.add_argument("--top", type=int, default=4, help="features shown per code")
    ap.add_argument("--feature", help="show this feature's rho for every code")
    ap.add_argument("--out", type=Path, help="CSV of every rho")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = []
    for run in args.runs:
        table = code_table(run, args.channels).assign(run=str(run))
        tables.append(table)
        for code, group in table.groupby("code"):
            group = group.reindex(group["rho"].abs().sort_values(ascending=False).index)
            group = group[group["feature"] == args.feature] if args.feature else group.head(args.top)
            shown = ", ".join(f"{f} {r:+.3f}" for f, r in zip(group["feature"], group["rho"], strict=True))
            print(f"{run}  {code}: {shown}")
    if args.out:
        pd.concat(tables, ignore_index=True).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
