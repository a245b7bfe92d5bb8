# The trunk is a chain of segments: step-N starts from the previous checkpoint, so appending a
# checkpoint to trunk.checkpoints schedules only the new segment. Decays branch off any checkpoint.
rule trunk:
    input:
        trunk_inputs,
    output:
        directory(paths.trunk_dir("{step}")),
    params:
        tracked=tracked("trunk"),
    log:
        "logs/trunk/step-{step}.log",
    benchmark:
        "benchmarks/trunk/step-{step}.tsv"
    threads: stage_threads("trunk", all_cores())
    resources:
        **stage_resources("trunk"),
    conda:
        TRAIN_ENV
    shell:
        "python -m workflow trunk --step {wildcards.step} > {log} 2>&1"


rule decay:
    input:
        decay_inputs,
    output:
        directory(paths.decay_dir("{branch}")),
    params:
        tracked=decay_params,
    log:
        "logs/decay/{branch}.log",
    benchmark:
        "benchmarks/decay/{branch}.tsv"
    threads: stage_threads("decay")
    resources:
        **stage_resources("decay"),
    conda:
        TRAIN_ENV
    shell:
        "python -m workflow decay --branch {wildcards.branch} > {log} 2>&1"
