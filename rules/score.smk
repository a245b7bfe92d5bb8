# workflow/quality/score.py: one scorer's per-document scores of one source (attribute shards)
rule score:
    input:
        unpack(stage_inputs("score")),
    output:
        stage_outputs("score"),
    params:
        tracked=stage_params("score"),
    log:
        stage_log("score"),
    benchmark:
        stage_benchmark("score")
    threads: stage_threads("score")
    resources:
        **stage_resources("score"),
    conda:
        stage_env("score")
    shell:
        stage_shell("score")
