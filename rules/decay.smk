# workflow/train/decay.py: one decay branch from its trunk checkpoint
rule decay:
    input:
        unpack(stage_inputs("decay")),
    output:
        stage_outputs("decay"),
    params:
        tracked=stage_params("decay"),
    log:
        stage_log("decay"),
    benchmark:
        stage_benchmark("decay")
    threads: stage_threads("decay")
    resources:
        **stage_resources("decay"),
    conda:
        stage_env("decay")
    shell:
        stage_shell("decay")
