rule merge:
    input:
        merge_inputs,
    output:
        directory(paths.merge_dir("{name}")),
    params:
        tracked=merge_params,
    log:
        "logs/merge/{name}.log",
    benchmark:
        "benchmarks/merge/{name}.tsv"
    threads: stage_threads("merge")
    resources:
        **stage_resources("merge"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow merge --name {wildcards.name} > {log} 2>&1"
