"""What `rules/*.smk` need from the stage table: input functions, tracked params, outputs, commands, resources.

Each rule is `rule <stage>:` with every field from one of these functions (rules/common.smk binds them to
the study's params), so a rule file holds no path, key list or edge of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from workflow import paths, stages
from workflow.params import JobResources, Params
from workflow.train import launch


def wildcards_key(stage: stages.Stage, wildcards: Any) -> dict[str, Any]:
    return stage.typed({k: getattr(wildcards, k) for k in stage.key_names})


def remote_stand_in(url: str) -> str:
    """A local file standing in for a remote input (Snakemake sees no mtime of `s3://`/`https://` objects): its
    `{url, size, etag | version | date}`, rewritten only when the object changed (one HEAD per DAG build). DVC
    tracks the URL itself (its ETag); the stage reads the URL."""
    from workflow.curate import readers, remote

    path = paths.remote_stand_in(url)
    readers.write_manifest([remote.describe(url)], path)
    return path


def inputs(params: Params, name: str) -> Callable[[Any], dict[str, list[str]]]:
    """The rule's input function: named lists of paths (`unpack()` them); remote inputs by their stand-ins."""
    stage = stages.STAGES[name]

    def function(wildcards: Any) -> dict[str, list[str]]:
        named = stage.inputs(params, **wildcards_key(stage, wildcards))
        return {k: [remote_stand_in(p) if "://" in p else p for p in v] for k, v in named.items()}

    function.__name__ = f"{name}_inputs"
    return function


def tracked(params: Params, name: str) -> Callable[[Any], str]:
    """The rule's tracked params: the values of the keys the stage reads, as one string (a change re-runs the job)."""
    stage = stages.STAGES[name]

    def function(wildcards: Any) -> str:
        return json.dumps(stages.values(params, stage.reads(params, **wildcards_key(stage, wildcards))), sort_keys=True)

    function.__name__ = f"{name}_params"
    return function


def outputs(name: str) -> list[str]:
    """Output patterns (wildcards in braces)."""
    stage = stages.STAGES[name]
    return stage.outputs(**{k: f"{{{k}}}" for k in stage.key_names})


def command(name: str) -> str:
    stage = stages.STAGES[name]
    return stage.command({k: f"{{wildcards.{k}}}" for k in stage.key_names})


def job_file(name: str, folder: str, suffix: str) -> str:
    """`logs/<stage>/<key values>.log`, `benchmarks/<stage>/<key values>.tsv`."""
    stage = stages.STAGES[name]
    keys = "-".join(f"{{{k}}}" for k in stage.key_names) or name
    return f"{folder}/{name}/{keys}{suffix}"


def wildcard_constraints() -> dict[str, str]:
    out: dict[str, str] = {}
    for stage in stages.STAGES.values():
        for key in stage.keys:
            if out.setdefault(key.name, key.pattern) != key.pattern:
                raise ValueError(f"key {key.name}: two stages give it different patterns")
    return out


def job_resources(params: Params, name: str) -> JobResources:
    return params.resources.get(name) or JobResources()


def threads(params: Params, name: str, cores: int) -> int:
    """A job's threads (SLURM --cpus-per-task): `resources.<stage>.cpus`, else every core for "all" stages."""
    return job_resources(params, name).cpus or (cores if stages.STAGES[name].threads == "all" else 1)


def resources(params: Params, name: str, scaled: Callable[[int], Any]) -> dict[str, Any]:
    """Snakemake resources (slurm executor names) from `resources.<stage>`; unset keys are left to the profile.

    Training stages ask for `model.parallel.nodes` nodes and, on the gpu backend, `nproc_per_node` GPUs on each;
    on several nodes they are `mpi` jobs that start one launcher per node.
    `scaled` makes a value grow with the attempt number (mem_mb, runtime).
    """
    res, stage = job_resources(params, name), stages.STAGES[name]
    nodes, gpus = res.nodes, res.gpus
    if stage.training:
        nodes = nodes or params.model.parallel.nodes
        if gpus is None and params.model.backend == "gpu":
            gpus = params.model.parallel.nproc_per_node
    out: dict[str, Any] = {"nodes": nodes} if nodes else {}
    if gpus:
        out["gpu"] = gpus * (nodes or 1)
    if stage.training:  # several nodes: one launcher per node (workflow/train/launch.py), no `srun -n1` wrapper
        out.update(launch.slurm_resources(nodes or 1, bool(gpus)))
    if res.mem_mb:
        out["mem_mb"] = scaled(res.mem_mb)
    if res.runtime:
        out["runtime"] = scaled(res.runtime)
    for key, slurm in (("partition", "slurm_partition"), ("account", "slurm_account"), ("constraint", "constraint")):
        if getattr(res, key) is not None:
            out[slurm] = getattr(res, key)
    return out
