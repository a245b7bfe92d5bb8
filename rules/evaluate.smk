# Data of the local lm-eval tasks (workflow/tasks/), built from the held-out split; evaluate reads it
# when eval.tasks lists a local task.
rule eval_tasks:
    input:
        eval_tasks_inputs,
    output:
        directory(paths.tasks_dir()),
    params:
        tracked=tracked("eval_tasks"),
    log:
        "logs/eval_tasks/eval_tasks.log",
    benchmark:
        "benchmarks/eval_tasks/eval_tasks.tsv"
    threads: stage_threads("eval_tasks")
    resources:
        **stage_resources("eval_tasks"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow eval-tasks > {log} 2>&1"


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
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        CPU_ENV
    shell:
        "python -m workflow evaluate --model {wildcards.model} > {log} 2>&1"
