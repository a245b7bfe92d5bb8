# Validation, wildcard constraints and input functions shared by every rule.
# All paths and per-stage inputs come from workflow/paths.py and workflow/dag.py (shared with dvc.yaml).
import json
import sys

from workflow import dag, paths
from workflow.params import NAME_PATTERN, ParamsError, parse_params

try:
    PARAMS = parse_params(config, workflow.configfiles[-1] if workflow.configfiles else "params.yaml")
except ParamsError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)

NAME = NAME_PATTERN.strip("^$")
CPU_ENV = "../envs/cpu.yaml"
TRAIN_ENV = "../envs/gpu.yaml" if PARAMS.model.backend == "gpu" else CPU_ENV


wildcard_constraints:
    source=NAME,
    domain=NAME,
    branch=NAME,
    name=NAME,
    step=r"\d+",
    model=rf"trunk-\d+|decay-{NAME}|merge-{NAME}",


def get_final_output():
    return [paths.report_dir()]


def tracked(stage, key=None):
    """The params.yaml values a stage reads, as one string: Snakemake reruns the job when it changes."""
    return json.dumps(dag.param_values(PARAMS, dag.param_keys(stage, key)), sort_keys=True)


def curate_inputs(wildcards):
    return dag.inputs(PARAMS, "curate", wildcards.source)


def curate_params(wildcards):
    return tracked("curate", wildcards.source)


def tokenizer_inputs(wildcards):
    return dag.inputs(PARAMS, "tokenizer")


def source_of_domain(wildcards):
    return PARAMS.source_of_domain(wildcards.domain)


def tokenize_inputs(wildcards):
    return dag.inputs(PARAMS, "tokenize", source_of_domain(wildcards))


def tokenize_params(wildcards):
    return tracked("tokenize", source_of_domain(wildcards))


def trunk_inputs(wildcards):
    return dag.inputs(PARAMS, "trunk", int(wildcards.step))


def decay_inputs(wildcards):
    return dag.inputs(PARAMS, "decay", wildcards.branch)


def decay_params(wildcards):
    return tracked("decay", wildcards.branch)


def merge_inputs(wildcards):
    return dag.inputs(PARAMS, "merge", wildcards.name)


def merge_params(wildcards):
    return tracked("merge", wildcards.name)


def evaluate_inputs(wildcards):
    return dag.inputs(PARAMS, "evaluate", wildcards.model)


def report_inputs(wildcards):
    return dag.inputs(PARAMS, "report")
