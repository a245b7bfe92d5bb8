# workflow/train/trunk.py: one segment of the WSD stable phase, from the previous checkpoint
rule trunk:
    input:
        unpack(stage_inputs("trunk")),
    output:
        stage_outputs("trunk"),
    params:
        tracked=stage_params("trunk"),
    log:
        stage_log("trunk"),
    benchmark:
        stage_benchmark("trunk")
    threads: stage_threads("trunk")
    resources:
        **stage_resources("trunk"),
    conda:
        stage_env("trunk")
    shell:
        stage_shell("trunk")
