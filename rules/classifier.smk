# workflow/quality/classifier.py: train one fastText quality classifier
rule classifier:
    input:
        unpack(stage_inputs("classifier")),
    output:
        stage_outputs("classifier"),
    params:
        tracked=stage_params("classifier"),
    log:
        stage_log("classifier"),
    benchmark:
        stage_benchmark("classifier")
    threads: stage_threads("classifier")
    resources:
        **stage_resources("classifier"),
    conda:
        stage_env("classifier")
    shell:
        stage_shell("classifier")
