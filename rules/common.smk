# Validation, wildcard constraints and input functions shared by every rule.
# All paths and per-stage inputs come from workflow/paths.py and workflow/dag.py (shared with dvc.yaml).
import json
import sys

from snakemake.exceptions import WorkflowError

from workflow import dag, lock, paths
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
    part=r"\d{5}",
    model=rf"trunk-\d+|decay-{NAME}|merge-{NAME}",


def hold_workspace():
    """A run holds the workspace against DVC commands until it exits (workflow/lock.py): only the main
    process (onstart never runs for dry runs; SLURM job steps re-run Snakemake and skip this)."""
    if not workflow.is_main_process:
        return
    try:
        lock.hold_against_dvc()
    except lock.WorkspaceBusy as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


onstart:
    hold_workspace()


def get_final_output():
    return [paths.report_dir()]


def tracked(stage, key=None):
    """The params.yaml values a stage reads, as one string: Snakemake reruns the job when it changes."""
    return json.dumps(dag.param_values(PARAMS, dag.param_keys(stage, key)), sort_keys=True)


def scaled_by_attempt(value):
    """A resource that grows with each retry, so a job killed at its memory or time limit asks for more."""

    def per_attempt(wildcards, attempt):
        return value * attempt

    return per_attempt


def all_cores():
    """Every core of a local run (`--cores`); 1 for cluster jobs, which ask for `resources.<stage>.cpus` instead
    (the same value when submitting, where no core total exists, and inside the job, so `srun` fits the allocation)."""
    if workflow.remote_exec:
        return 1
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def stage_threads(stage, default=1):
    """Threads of a stage's jobs (SLURM --cpus-per-task): `resources.<stage>.cpus`, else `default`."""
    return getattr(PARAMS.resources, stage).cpus or default


def stage_resources(stage):
    """Snakemake resources (slurm executor names) of a stage's jobs from `resources.<stage>` in params.yaml.

    Unset keys are left to the profile's default-resources. Trunk and decay jobs ask for
    `model.parallel.nodes` nodes and, on the gpu backend, `nproc_per_node` GPUs on each.
    Runtime settings only: no stage reads them, so they are neither tracked params nor DVC deps.
    """
    res = getattr(PARAMS.resources, stage)
    nodes, gpus = res.nodes, res.gpus
    if stage in ("trunk", "decay"):
        nodes = nodes or PARAMS.model.parallel.nodes
        if gpus is None and PARAMS.model.backend == "gpu":
            gpus = PARAMS.model.parallel.nproc_per_node
    out = {"nodes": nodes} if nodes else {}
    if gpus:
        out["gpu"] = gpus * (nodes or 1)
    if res.mem_mb:
        out["mem_mb"] = scaled_by_attempt(res.mem_mb)
    if res.runtime:
        out["runtime"] = scaled_by_attempt(res.runtime)
    for key, name in (("partition", "slurm_partition"), ("account", "slurm_account"), ("constraint", "constraint")):
        if getattr(res, key) is not None:
            out[name] = getattr(res, key)
    return out


def curate_shard_inputs(wildcards):
    return dag.inputs(PARAMS, "curate_shard", (wildcards.source, wildcards.part))


def curate_shard_params(wildcards):
    return tracked("curate_shard", wildcards.source)


def curate_split_inputs(wildcards):
    return dag.inputs(PARAMS, "curate_split", wildcards.source)


def curate_split_params(wildcards):
    return tracked("curate_split", wildcards.source)


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


def eval_tasks_inputs(wildcards):
    return dag.inputs(PARAMS, "eval_tasks")


def evaluate_inputs(wildcards):
    return dag.inputs(PARAMS, "evaluate", wildcards.model)


def report_inputs(wildcards):
    return dag.inputs(PARAMS, "report")
