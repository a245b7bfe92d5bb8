# workflow/curate/shard.py: one raw input file through the per-document filters
rule curate_shard:
    input:
        unpack(stage_inputs("curate_shard")),
    output:
        stage_outputs("curate_shard"),
    params:
        tracked=stage_params("curate_shard"),
    log:
        stage_log("curate_shard"),
    benchmark:
        stage_benchmark("curate_shard")
    threads: stage_threads("curate_shard")
    resources:
        **stage_resources("curate_shard"),
    conda:
        stage_env("curate_shard")
    shell:
        stage_shell("curate_shard")
