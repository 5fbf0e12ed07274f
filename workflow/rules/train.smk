# Stage 2: one InfoGAN run per seed (InfoGAN results vary between seeds).


rule train:
    input:
        crops="results/crops/crops.h5",
    output:
        network="results/train/seed{seed}/network-final.pt",
        samples=report(
            "results/train/seed{seed}/samples.gif",
            caption="../report/samples.rst",
            category="2 Training",
            labels={"seed": "{seed}", "figure": "samples over training"},
        ),
        loss=report(
            "results/train/seed{seed}/loss.png",
            caption="../report/loss.rst",
            category="2 Training",
            labels={"seed": "{seed}", "figure": "losses"},
        ),
    log:
        "logs/train/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/seed{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=get_train_mem_mb,
        runtime=get_train_runtime,
        gpu=get_gpus,
    script:
        "../scripts/train.py"
