"""HTML pages and figures: shared helpers, the analysis report, the explorer, plots."""
