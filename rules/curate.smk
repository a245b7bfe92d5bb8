rule curate:
    input:
        curate_inputs,
    output:
        directory(paths.curated_dir("{source}")),
    params:
        tracked=curate_params,
    log:
        "logs/curate/{source}.log",
    benchmark:
        "benchmarks/curate/{source}.tsv"
    conda:
        CPU_ENV
    shell:
        "python -m workflow curate --source {wildcards.source} > {log} 2>&1"
