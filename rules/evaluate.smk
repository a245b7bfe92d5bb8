# workflow/evaluate/__init__.py: held-out loss/bpb and lm-eval tasks of one model
rule evaluate:
    input:
        unpack(stage_inputs("evaluate")),
    output:
        stage_outputs("evaluate"),
    params:
        tracked=stage_params("evaluate"),
    log:
        stage_log("evaluate"),
    benchmark:
        stage_benchmark("evaluate")
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        stage_env("evaluate")
    shell:
        stage_shell("evaluate")
