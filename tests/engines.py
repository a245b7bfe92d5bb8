"""Read a study's DAG back from the engines themselves: Snakemake's job graph and DVC's index.

Each engine is reduced to `{output: Job}` where a Job holds the command, the inputs and the
params.yaml keys it tracks, so the two can be compared without a hand-kept list.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    cmd: str
    inputs: frozenset[str]
    params: frozenset[str]


@contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


LOG_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")


def snakemake_jobs(repo: Path) -> dict[str, Job]:
    """Every job Snakemake would run for the study (forceall), keyed by output path."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

    from workflow.curate.readers import frozen_listings

    jobs: dict[str, Job] = {}
    # rules/common.smk freezes the sources' listings for its process: here, only while this DAG is built
    with _cwd(repo), frozen_listings(), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"), workdir=Path("."))
        wf.dag(dag_settings=DAGSettings(forceall=True))
        workflow = wf._workflow  # the public API prints DAGs but does not return them
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        for job in workflow.dag.jobs:
            if job.rule.name == "all":
                continue
            cmd = LOG_REDIRECT.sub("", job.shellcmd)
            tracked = frozenset(json.loads(job.params.tracked))
            for out in job.output:
                jobs[str(out)] = Job(cmd, frozenset(map(str, job.input)), tracked)
    return jobs


def dvc_jobs(repo: Path) -> dict[str, Job]:
    """Every stage of `dvc.yaml` as DVC resolves it (foreach expanded), keyed by output path; its params are the
    keys of the params file it tracks (artifacts/params/<stage>.json)."""
    from dvc.repo import Repo

    jobs: dict[str, Job] = {}
    with Repo(str(repo)) as dvc:
        for stage in dvc.index.stages:
            deps = frozenset(str(d.def_path) for d in stage.deps if not hasattr(d, "params"))
            files = [repo / str(d.def_path) for d in stage.deps if hasattr(d, "params")]
            params = frozenset(k for f in files if f.is_file() for k in json.loads(f.read_text()) if k != "_inputs")
            for out in stage.outs:
                jobs[str(out.def_path)] = Job(stage.cmd, deps, params)
    return jobs
