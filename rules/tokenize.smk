# workflow/tokenize.py: one domain's Megatron .bin/.idx datasets
rule tokenize:
    input:
        unpack(stage_inputs("tokenize")),
    output:
        stage_outputs("tokenize"),
    params:
        tracked=stage_params("tokenize"),
    log:
        stage_log("tokenize"),
    benchmark:
        stage_benchmark("tokenize")
    threads: stage_threads("tokenize")
    resources:
        **stage_resources("tokenize"),
    conda:
        stage_env("tokenize")
    shell:
        stage_shell("tokenize")
