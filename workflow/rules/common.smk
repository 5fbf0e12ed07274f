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
# The workflow trains on the crops it makes: a size the networks cannot take fails here, not
# after every crop job (`infogan-cells crop` alone may make other sizes).
if CFG.crop.size & (CFG.crop.size - 1):
    raise ValueError(
        f"invalid config: config key 'crop.size': {CFG.crop.size} is not a power of two; "
        "the workflow trains on the crops and the networks take 8, 16, 32, 64, 128... pixels"
    )

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


# --------------------------------------------------------------------------------------
# Resources: what each job asks a scheduler for (docs/cluster.md). Memory and time grow with
# the input and with `attempt` (a job retried after running out doubles its ask).

# Host memory of a loaded crop store, per byte of its uncompressed crops (N*H*W*C): gathering
# and the analysis read the whole store, select the crops that passed QC and copy them
# channels-first; measured at 3.1x (peak RSS over the interpreter's, 16000 crops of 64x64x3).
CROPS_MEMORY_FACTOR = 3.2
# Training reads the store block by block into one tensor (train.load_crops): at most 1.2x the
# crops plus a 16 MB block (tests/test_precision.py); on a GPU the crops live in GPU memory.
TRAIN_CROPS_MEMORY_FACTOR = 1.2
# Training speed assumed for the time limit, in images per second: a 64-wide InfoGAN on one
# GPU, and the default 16-wide one on a few CPU cores, both with room to spare.
TRAIN_IMAGES_PER_S = {"gpu": 200, "cpu": 20}


def get_gpus(wildcards):
    """One GPU for the torch jobs when the config says `device: cuda` (or cuda:N), else none.

    `device: auto` asks for none: the job runs where the scheduler puts it and uses a GPU
    only if that node has one (a CPU-only cluster never sees a GPU request).
    """
    return 1 if CFG.device.startswith("cuda") else 0


def per_attempt(amount):
    """A resource of `amount` on the first attempt, twice that on the second, and so on."""

    def resource(wildcards, attempt):
        return amount * attempt

    return resource


def crops_mb(input, paths):
    """Uncompressed size, in MB, of the crops in HDF5 crop stores (N*H*W*C bytes, from each
    store's header), at least the files' size. Reading `input.size_mb` first makes Snakemake
    wait with the evaluation until the stores exist (a dry run shows <TBD>)."""
    import h5py

    on_disk = input.size_mb
    total = 0
    for path in paths:
        with h5py.File(path, "r") as f:
            total += f["images"].size
    return max(on_disk, total / 1e6)


def get_crop_mem_mb(wildcards, input, attempt):
    """One image (or a whole single-cell array file) decoded: a few times its file size."""
    return int((2000 + 4 * input.size_mb) * attempt)


def get_crop_runtime(wildcards, input, attempt):
    return int((30 + input.size_mb / 10) * attempt)


def get_gather_crops_mem_mb(wildcards, input, attempt):
    """Every part's crops in memory at once, joined into one array."""
    return int((2000 + CROPS_MEMORY_FACTOR * crops_mb(input, input.parts)) * attempt)


def get_gather_crops_runtime(wildcards, input, attempt):
    return int((30 + input.size_mb / 20) * attempt)


def get_torch_mem_mb(wildcards, input, attempt):
    """The analysis: the crop store loaded whole, beside torch and the networks."""
    return int((4000 + CROPS_MEMORY_FACTOR * crops_mb(input, [input.crops])) * attempt)


def get_train_mem_mb(wildcards, input, attempt):
    """Training: the crops loaded block by block into one tensor, beside torch and the networks."""
    return int(
        (4000 + TRAIN_CROPS_MEMORY_FACTOR * crops_mb(input, [input.crops])) * attempt
    )


def get_train_runtime(wildcards, attempt):
    """Minutes for train.total_images at a conservative speed on the device asked for."""
    rate = TRAIN_IMAGES_PER_S["gpu" if get_gpus(wildcards) else "cpu"]
    return int((30 + CFG.train.total_images / rate / 60) * attempt)


def get_analyse_runtime(wildcards, input, attempt):
    return int((120 + crops_mb(input, [input.crops]) / 10) * attempt)


def get_gather_synthesis_mem_mb(wildcards, input, attempt):
    """The TIFF stacks are written one category at a time from the (compressed) shards."""
    return int((2000 + 4 * input.size_mb) * attempt)


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
