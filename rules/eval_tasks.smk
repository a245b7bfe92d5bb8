# workflow/evaluate/taskdata.py: data of the local lm-eval tasks
rule eval_tasks:
    input:
        unpack(stage_inputs("eval_tasks")),
    output:
        stage_outputs("eval_tasks"),
    params:
        tracked=stage_params("eval_tasks"),
    log:
        stage_log("eval_tasks"),
    benchmark:
        stage_benchmark("eval_tasks")
    threads: stage_threads("eval_tasks")
    resources:
        **stage_resources("eval_tasks"),
    conda:
        stage_env("eval_tasks")
    shell:
        stage_shell("eval_tasks")
