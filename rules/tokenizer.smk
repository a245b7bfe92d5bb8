# workflow/tokenizer.py: train (or copy) the byte-level BPE tokenizer
rule tokenizer:
    input:
        unpack(stage_inputs("tokenizer")),
    output:
        stage_outputs("tokenizer"),
    params:
        tracked=stage_params("tokenizer"),
    log:
        stage_log("tokenizer"),
    benchmark:
        stage_benchmark("tokenizer")
    threads: stage_threads("tokenizer")
    resources:
        **stage_resources("tokenizer"),
    conda:
        stage_env("tokenizer")
    shell:
        stage_shell("tokenizer")
