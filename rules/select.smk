# workflow/quality/select.py: one data variant's keep masks from its scorer's scores
rule select:
    input:
        unpack(stage_inputs("select")),
    output:
        stage_outputs("select"),
    params:
        tracked=stage_params("select"),
    log:
        stage_log("select"),
    benchmark:
        stage_benchmark("select")
    threads: stage_threads("select")
    resources:
        **stage_resources("select"),
    conda:
        stage_env("select")
    shell:
        stage_shell("select")
