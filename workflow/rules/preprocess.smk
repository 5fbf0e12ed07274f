# Stage 1: simulate the default data (when the input is the simulator), crop each image in its
# own job (so a cluster spreads images over jobs), and gather the crops into one store.


rule simulate:
    output:
        annotations="results/simulate/annotations.json",
        images=expand(
            "results/simulate/images/smear_{i:04d}.png", i=range(CFG.simulate.n_images)
        ),
    log:
        "logs/simulate.log",
    conda:
        "../envs/cells.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    script:
        "../scripts/simulate.py"


rule crop_image:
    input:
        unpack(get_crop_inputs),
    output:
        part="results/crops/parts/{image}.h5",
    log:
        "logs/crop/{image}.log",
    benchmark:
        "logs/benchmarks/crop/{image}.tsv"
    conda:
        "../envs/cells.yaml"
    threads: 1
    resources:
        mem_mb=get_crop_mem_mb,
        runtime=get_crop_runtime,
    params:
        source=get_source_name,
    script:
        "../scripts/crop_image.py"


rule gather_crops:
    input:
        parts=get_crop_parts,
    output:
        crops="results/crops/crops.h5",
        table="results/crops/crops.csv",
        montages=report(
            directory("results/crops/montages"),
            patterns=["{name}.png"],
            caption="../report/montage.rst",
            category="1 Preprocessing",
            labels={"montage": "{name}"},
        ),
    log:
        "logs/gather_crops.log",
    conda:
        "../envs/cells.yaml"
    threads: 1
    resources:
        mem_mb=get_gather_crops_mem_mb,
        runtime=get_gather_crops_runtime,
    script:
        "../scripts/gather_crops.py"
