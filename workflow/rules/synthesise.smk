# Stage 4: labelled synthetic cells, scattered over shards (one job each), gathered into an
# HDF5 virtual-dataset master file and per-category TIFF stacks.


rule synthesise_shard:
    input:
        choice="results/analyse/seeds/seeds.json",
        networks=get_run_dirs,
        category_maps=get_category_maps,
    output:
        shard="results/synthesis/shards/synth-{shard}-of-{n}.h5",
    log:
        "logs/synthesise/shard{shard}-of-{n}.log",
    benchmark:
        "logs/benchmarks/synthesise/shard{shard}-of-{n}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(120),
        gpu=get_gpus,
    script:
        "../scripts/synthesise_shard.py"


rule gather_synthesis:
    input:
        shards=get_synthesis_shards,
    output:
        master="results/synthesis/synth.h5",
        tiff=directory("results/synthesis/tiff"),
    log:
        "logs/gather_synthesis.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=get_gather_synthesis_mem_mb,
        runtime=per_attempt(60),
    script:
        "../scripts/gather_synthesis.py"
