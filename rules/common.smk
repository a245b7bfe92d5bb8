# Validation, wildcard constraints and the helpers every rule is made of. Stages are declared once, in
# workflow/stages.py; workflow/engines/snakemake.py turns a table entry into a rule's fields.
import sys

from snakemake.exceptions import WorkflowError

from workflow import lock, paths, stages
from workflow.curate.readers import freeze_listings
from workflow.engines import dvc as dvc_engine
from workflow.engines import snakemake as engine
from workflow.params import ParamsError, parse_params

freeze_listings()  # each source listed once per run, not once per job

try:
    PARAMS = parse_params(config, workflow.configfiles[-1] if workflow.configfiles else "params.yaml")
    stages.check_resources(PARAMS)
except ParamsError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


wildcard_constraints:
    **engine.wildcard_constraints(),


def keep_dvc_in_step():
    """dvc.yaml and artifacts/params/ follow params.yaml before any planning (main process only: SLURM job
    steps re-run Snakemake and must not write), unless a DVC command or another run holds the workspace:
    `dvc repro` may be deleting and rewriting artifacts/params/ (its `resolve` stage) right now."""
    if workflow.remote_exec or not workflow.is_main_process:
        return
    busy = lock.holder()
    if busy:
        print(f"arbor: {busy} is running in this workspace: dvc.yaml and artifacts/params/ left as they are",
              file=sys.stderr)
        return
    for written in dvc_engine.sync(PARAMS):
        print(f"arbor: updated {written} from params.yaml", file=sys.stderr)


keep_dvc_in_step()


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


def all_cores():
    """Every core of a local run (`--cores`); 1 for cluster jobs, which ask for `resources.<stage>.cpus` instead
    (the same value when submitting, whose `cores` are the login node's, and inside the job, so `srun` fits the
    allocation)."""
    if workflow.remote_exec or not workflow.local_exec:
        return 1
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def scaled_by_attempt(value):
    """A resource that grows with each retry, so a job killed at its memory or time limit asks for more."""

    def per_attempt(wildcards, attempt):
        return value * attempt

    return per_attempt


def stage_inputs(name):
    return engine.inputs(PARAMS, name)


def stage_outputs(name):
    patterns = engine.outputs(name)
    return [directory(p) for p in patterns] if stages.STAGES[name].directories else patterns


def stage_params(name):
    return engine.tracked(PARAMS, name)


def stage_log(name):
    return engine.job_file(name, "logs", ".log")


def stage_benchmark(name):
    return engine.job_file(name, "benchmarks", ".tsv")


def stage_threads(name):
    return engine.threads(PARAMS, name, all_cores())


def stage_resources(name):
    return engine.resources(PARAMS, name, scaled_by_attempt)


def stage_env(name):
    return "../envs/gpu.yaml" if stages.STAGES[name].training and PARAMS.model.backend == "gpu" else "../envs/cpu.yaml"


def stage_shell(name):
    return engine.command(name) + " > {log} 2>&1"
