rule tokenizer:
    input:
        tokenizer_inputs,
    output:
        directory(paths.tokenizer_dir()),
    params:
        tracked=tracked("tokenizer"),
    log:
        "logs/tokenizer/tokenizer.log",
    benchmark:
        "benchmarks/tokenizer/tokenizer.tsv"
    threads: stage_threads("tokenizer")
    resources:
        **stage_resources("tokenizer"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow tokenizer > {log} 2>&1"


rule tokenize:
    input:
        tokenize_inputs,
    output:
        paths.tokens_files("{domain}"),
    params:
        source=source_of_domain,
        tracked=tokenize_params,
    log:
        "logs/tokenize/{domain}.log",
    benchmark:
        "benchmarks/tokenize/{domain}.tsv"
    threads: stage_threads("tokenize", all_cores())  # worker processes: Snakemake exports OMP_NUM_THREADS={threads}, which tokenize reads
    resources:
        **stage_resources("tokenize"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow tokenize --source {params.source} > {log} 2>&1"
