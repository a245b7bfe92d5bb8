# workflow/merge.py: a weight average of models
rule merge:
    input:
        unpack(stage_inputs("merge")),
    output:
        stage_outputs("merge"),
    params:
        tracked=stage_params("merge"),
    log:
        stage_log("merge"),
    benchmark:
        stage_benchmark("merge")
    threads: stage_threads("merge")
    resources:
        **stage_resources("merge"),
    conda:
        stage_env("merge")
    shell:
        stage_shell("merge")
