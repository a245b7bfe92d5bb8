# workflow/curate/split.py: a source's exact + MinHash dedup and held-out split
rule curate_split:
    input:
        unpack(stage_inputs("curate_split")),
    output:
        stage_outputs("curate_split"),
    params:
        tracked=stage_params("curate_split"),
    log:
        stage_log("curate_split"),
    benchmark:
        stage_benchmark("curate_split")
    threads: stage_threads("curate_split")
    resources:
        **stage_resources("curate_split"),
    conda:
        stage_env("curate_split")
    shell:
        stage_shell("curate_split")
