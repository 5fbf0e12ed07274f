# Stage 3: what each category captures and what each continuous code changes; reports.


rule analyse:
    input:
        network="results/train/seed{seed}/network-final.pt",
        crops="results/crops/crops.h5",
    output:
        metrics="results/analyse/seed{seed}/metrics.json",
        category_map="results/analyse/seed{seed}/category_map.csv",
        cells="results/analyse/seed{seed}/cells.h5ad",
        report_index="results/analyse/seed{seed}/report/index.html",
        samples=report(
            directory("results/analyse/seed{seed}/samples"),
            patterns=["cat{category}.png"],
            caption="../report/category_samples.rst",
            category="3 Cell categories",
            subcategory="category {category}",
            labels={"seed": "{seed}", "figure": "generated cells"},
        ),
        nearest=report(
            directory("results/analyse/seed{seed}/nearest"),
            patterns=["cat{category}.png"],
            caption="../report/category_nearest.rst",
            category="3 Cell categories",
            subcategory="category {category}",
            labels={"seed": "{seed}", "figure": "real cells"},
        ),
    log:
        "logs/analyse/seed{seed}.log",
    benchmark:
        "logs/benchmarks/analyse/seed{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=get_torch_mem_mb,
        runtime=get_analyse_runtime,
        gpu=get_gpus,
    script:
        "../scripts/analyse.py"


rule compare_seeds:
    input:
        metrics=get_analyses,
    output:
        index="results/analyse/seeds/index.html",
        choice="results/analyse/seeds/seeds.json",
    log:
        "logs/compare_seeds.log",
    conda:
        "../envs/cells.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    script:
        "../scripts/compare_seeds.py"
