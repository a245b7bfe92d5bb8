# workflow/tokenize.py: one data variant's Megatron .bin/.idx of one domain (run_selected)
rule tokenize_selected:
    input:
        unpack(stage_inputs("tokenize_selected")),
    output:
        stage_outputs("tokenize_selected"),
    params:
        tracked=stage_params("tokenize_selected"),
    log:
        stage_log("tokenize_selected"),
    benchmark:
        stage_benchmark("tokenize_selected")
    threads: stage_threads("tokenize_selected")
    resources:
        **stage_resources("tokenize_selected"),
    conda:
        stage_env("tokenize_selected")
    shell:
        stage_shell("tokenize_selected")
