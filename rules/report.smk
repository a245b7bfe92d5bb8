# workflow/report/__init__.py: reports/ from every eval and training log
rule report:
    input:
        unpack(stage_inputs("report")),
    output:
        stage_outputs("report"),
    params:
        tracked=stage_params("report"),
    log:
        stage_log("report"),
    benchmark:
        stage_benchmark("report")
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        stage_env("report")
    shell:
        stage_shell("report")
