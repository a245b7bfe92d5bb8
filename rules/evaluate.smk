rule evaluate:
    input:
        evaluate_inputs,
    output:
        paths.eval_file("{model}"),
    params:
        tracked=tracked("evaluate"),
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/evaluate/{model}.tsv"
    threads: 1
    conda:
        CPU_ENV
    shell:
        "python -m workflow evaluate --model {wildcards.model} > {log} 2>&1"
