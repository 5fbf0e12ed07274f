# Config validation and the helper functions the rules use.

import re

from snakemake.utils import validate

from infogan_cells.config import Config, ConfigError, from_mapping

# The config's own checks (infogan_cells/config.py: types, ranges and the rules between keys)
# fail the DAG at parse time with one line naming the keys, before any job runs; then the JSON
# schema generated from the same dataclasses (`infogan-cells schema`).
try:
    CFG = from_mapping(Config, config)
except ConfigError as err:
    raise ValueError(f"invalid config: {err}") from None

validate(config, schema="../schemas/config.schema.json")


wildcard_constraints:
    seed=r"\d+",
    shard=r"\d+",
    image=r"[^/]+",


SEEDS = [int(s) for s in CFG.train.seeds]
N_SHARDS = CFG.synthesis.shards
SIMULATED = CFG.input.path == "simulate"


def get_source_images():
    """Names of the source images, one crop job each ('all' for single-cell inputs)."""
    if SIMULATED:
        return [f"smear_{i:04d}" for i in range(CFG.simulate.n_images)]
    from infogan_cells.readers import list_source_images

    names = list_source_images(CFG.input.path, CFG.input.format)
    return [_job_name(n) for n in names] if names else ["all"]


def _job_name(name):
    """A source image's name as a wildcard value (no folder separators)."""
    return re.sub(r"[\\/]+", "__", name)


def get_source_name(wildcards):
    """The source image a crop job works on (None: the whole single-cell input)."""
    if wildcards.image == "all":
        return None
    if SIMULATED:
        return f"images/{wildcards.image}.png"
    from infogan_cells.readers import list_source_images

    names = {
        _job_name(n): n for n in list_source_images(CFG.input.path, CFG.input.format)
    }
    return names[wildcards.image]


def get_crop_inputs(wildcards):
    """The annotation file (or input folder) and, for simulated smears, the one image."""
    if SIMULATED:
        return {
            "annotations": "results/simulate/annotations.json",
            "image": f"results/simulate/images/{wildcards.image}.png",
        }
    return {"annotations": CFG.input.path}


def get_crop_parts(wildcards):
    return expand("results/crops/parts/{image}.h5", image=get_source_images())


def get_gpus(wildcards):
    """One GPU for the torch jobs where the config asks for CUDA (the slurm profile asks anyway)."""
    return 1 if CFG.device.startswith("cuda") else 0


def get_run_dirs(wildcards):
    return expand("results/train/seed{seed}/network-final.pt", seed=SEEDS)


def get_analyses(wildcards):
    return expand("results/analyse/seed{seed}/metrics.json", seed=SEEDS)


def get_category_maps(wildcards):
    return expand("results/analyse/seed{seed}/category_map.csv", seed=SEEDS)


def get_synthesis_shards(wildcards):
    return expand(
        "results/synthesis/shards/synth-{shard}-of-{n}.h5",
        shard=range(N_SHARDS),
        n=N_SHARDS,
    )


def get_final_outputs():
    return [
        "results/crops/crops.h5",
        *expand("results/analyse/seed{seed}/report/index.html", seed=SEEDS),
        "results/analyse/seeds/index.html",
        "results/synthesis/synth.h5",
    ]
