# workflow/curate/gather.py: decontaminate a source and write its curated shards
rule curate:
    input:
        unpack(stage_inputs("curate")),
    output:
        stage_outputs("curate"),
    params:
        tracked=stage_params("curate"),
    log:
        stage_log("curate"),
    benchmark:
        stage_benchmark("curate")
    threads: stage_threads("curate")
    resources:
        **stage_resources("curate"),
    conda:
        stage_env("curate")
    shell:
        stage_shell("curate")
