# infogan-cells: microscopy images -> single-cell crops -> InfoGAN -> labelled synthetic cells.
#
# A table of contents: the stages live in workflow/rules/*.smk, their logic in the
# infogan_cells package. Run `snakemake --cores 2` for the default pipeline on simulated smears.

import os

from snakemake.utils import min_version

min_version("9.0")


# Found beside this Snakefile, so `--directory DIR` runs elsewhere; --configfile FILE overrides.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analyse.smk"
include: "workflow/rules/synthesise.smk"


# Small jobs that a cluster would only queue: run them where Snakemake runs.
localrules:
    all,
    compare_seeds,


rule all:
    default_target: True
    input:
        get_final_outputs(),
