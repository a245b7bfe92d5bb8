# arbor: the study DAG for Snakemake. One rule file per stage; every rule runs `python -m workflow ...`.
# The same stages are declared for DVC in dvc.yaml (generated from params.yaml by workflow/dag.py).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/curate.smk"
include: "rules/tokenize.smk"
include: "rules/train.smk"
include: "rules/merge.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
