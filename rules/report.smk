rule report:
    input:
        report_inputs,
    output:
        directory(paths.report_dir()),
    params:
        tracked=tracked("report"),
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow report > {log} 2>&1"
