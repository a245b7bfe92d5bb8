# arbor: the study DAG for Snakemake. One rule file per stage of workflow/stages.py; every rule runs
# `python -m workflow <stage> ...`. dvc.yaml declares the same stages for DVC (workflow/engines/dvc.py).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/curate_shard.smk"
include: "rules/curate_split.smk"
include: "rules/curate.smk"
include: "rules/tokenizer.smk"
include: "rules/tokenize.smk"
include: "rules/classifier.smk"
include: "rules/score.smk"
include: "rules/select.smk"
include: "rules/tokenize_selected.smk"
include: "rules/trunk.smk"
include: "rules/decay.smk"
include: "rules/merge.smk"
include: "rules/eval_tasks.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
