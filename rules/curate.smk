# Curation in three steps (workflow/curate/): one job per input file, a global dedup + held-out
# split per source, then per-source decontamination against every held-out split and the output.
rule curate_shard:
    input:
        curate_shard_inputs,
    output:
        directory(paths.curate_shard_dir("{source}", "{part}")),
    params:
        tracked=curate_shard_params,
    log:
        "logs/curate_shard/{source}-{part}.log",
    benchmark:
        "benchmarks/curate_shard/{source}-{part}.tsv"
    threads: stage_threads("curate_shard")
    resources:
        **stage_resources("curate_shard"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow curate-shard --source {wildcards.source} --part {wildcards.part} > {log} 2>&1"


rule curate_split:
    input:
        curate_split_inputs,
    output:
        directory(paths.curate_split_dir("{source}")),
    params:
        tracked=curate_split_params,
    log:
        "logs/curate_split/{source}.log",
    benchmark:
        "benchmarks/curate_split/{source}.tsv"
    threads: stage_threads("curate_split")
    resources:
        **stage_resources("curate_split"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow curate-split --source {wildcards.source} > {log} 2>&1"


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
    threads: stage_threads("curate")
    resources:
        **stage_resources("curate"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow curate --source {wildcards.source} > {log} 2>&1"
