"""`python -m workflow why [TARGET]`: each job that would run, and what made it stale.

Snakemake plans the study in-process (as `snakemake -n` would: nothing runs; dvc.yaml is kept in step) and keeps,
for every output, the params it was built with; for each job it would run this prints the reason in the
study's own terms: the params keys whose values changed (old -> new), the inputs that are new, changed or
rebuilt upstream, a missing output, or a changed command.
"""

from __future__ import annotations

import ast
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow.params import Params, ParamsError


@dataclass
class Stale:
    """One job that would run, and why."""
    label: str
    command: str
    outputs: list[str]
    params: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (old, new)
    missing: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)        # inputs newer than the output
    rebuilt: list[str] = field(default_factory=list)        # the jobs of the plan that rebuild its inputs
    inputs_changed: bool = False                             # the set of input files differs from the last run
    code_changed: bool = False
    incomplete: list[str] = field(default_factory=list)

    def reasons(self) -> list[str]:
        out = [f"params {k}: {_show(old)} -> {_show(new)}" for k, (old, new) in sorted(self.params.items())]
        if self.missing:
            out.append(f"output missing: {', '.join(self.missing)}")
        if self.incomplete:
            out.append(f"output incomplete (a killed run): {', '.join(self.incomplete)}")
        if self.inputs_changed:
            out.append("its list of inputs changed (an edge of the DAG moved)")
        if self.updated:
            out.append(f"inputs changed: {', '.join(self.updated)}")
        if self.rebuilt:
            out.append(f"rebuilt upstream: {', '.join(self.rebuilt)}")
        if self.code_changed:
            out.append("its command changed")
        return out or ["forced"]


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def _tracked(serialized: set[Any]) -> dict[str, Any]:
    """The tracked values of one side of a Snakemake params change (each param stored as the repr of its value)."""
    out: dict[str, Any] = {}
    for item in serialized:
        with contextlib.suppress(ValueError, SyntaxError, TypeError, json.JSONDecodeError):
            value = json.loads(ast.literal_eval(item)) if isinstance(item, str) else None
            if isinstance(value, dict):
                out.update(value)
    return out


def _leaves(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> value, sections flattened to their leaves (`decays.late.shape`)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_leaves({f"{key}.{k}": v for k, v in value.items()}))
        else:
            out[key] = value
    return out


def _param_changes(change: Any) -> dict[str, tuple[Any, Any]]:
    old, new = _leaves(_tracked(change.only_old)), _leaves(_tracked(change.only_new))
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in set(old) | set(new)
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def plan(params: Params, workdir: str | Path = ".") -> list[Stale]:
    """The jobs Snakemake would run in `workdir` (its Snakefile and params.yaml), with their reasons, in DAG order."""
    from workflow import stages

    producers = {out: job.label for job in stages.jobs(params) for out in job.outputs}
    order = {job.label: i for i, job in enumerate(stages.jobs(params))}
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

    out: list[Stale] = []
    with contextlib.chdir(workdir), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"), workdir=Path("."))
        wf.dag(dag_settings=DAGSettings())
        workflow = wf._workflow  # the public API prints DAGs but does not return them
        workflow._prepare_dag(forceall=False, ignore_incomplete=False, lock_warn_only=True)
        workflow._build_dag()
        dag = workflow.dag
        for job in dag.needrun_jobs():
            if job.rule.name == "all":
                continue
            r = dag.reason(job)
            stale = Stale(label=_label(job), command=job.shellcmd.split(" > ")[0] if job.shellcmd else job.rule.name,
                          outputs=[str(o) for o in job.output])
            if r.params_changed:
                stale.params = _param_changes(r.params_changed)
            stale.missing = sorted(map(str, r.missing_output)) if r._missing_output else []
            stale.incomplete = sorted(map(str, r.incomplete_output)) if r._incomplete_output else []
            rebuilt = r.updated_input_run if r._updated_input_run else set()
            stale.rebuilt = sorted({producers.get(str(f), str(f)) for f in rebuilt}, key=lambda x: order.get(x, 0))
            updated = (r.updated_input - r.updated_input_run) if r._updated_input else set()
            stale.updated = sorted(map(str, updated))
            stale.inputs_changed, stale.code_changed = bool(r.input_changed), bool(r.code_changed)
            out.append(stale)
    return sorted(out, key=lambda s: order.get(s.label, len(order)))


def _label(job: Any) -> str:
    from workflow import stages

    stage = stages.STAGES.get(job.rule.name)
    if stage is None:
        return job.rule.name
    return stage.label({k: job.wildcards_dict[k] for k in stage.key_names})


def select(jobs: list[Stale], target: str | None) -> list[Stale]:
    """The jobs behind `target`: an output path, a model id (its dir or eval file), a stage name or an instance."""
    if target is None:
        return jobs
    from workflow import paths, stages

    wanted = {target.rstrip("/")}
    from workflow.params import MODEL_ID

    if MODEL_ID.match(target):
        wanted |= {paths.model_dir(target), paths.eval_file(target)}
    chosen = [j for j in jobs if wanted & set(j.outputs) or j.label == target
              or (target in stages.STAGES and j.label.split("@")[0] == target)]
    if not chosen and not any(target in (j.label, *j.outputs) for j in jobs):
        known = target in stages.STAGES or Path(target).exists() or wanted - {target}
        if not known:
            raise ParamsError(f"why {target}: not an output, model id or stage of the study")
    return chosen


def explain(params: Params, target: str | None = None) -> list[Stale]:
    """Print the plan with its reasons; returns it."""
    jobs = select(plan(params), target)
    if not jobs:
        print(f"{target or 'the study'}: up to date, nothing would run")
        return jobs
    print(f"{len(jobs)} job{'s' * (len(jobs) != 1)} would run{f' for {target}' if target else ''}:")
    width = max(len(j.label) for j in jobs)
    for job in jobs:
        first, *rest = job.reasons()
        print(f"  {job.label:<{width}}  {first}")
        for line in rest:
            print(f"  {'':<{width}}  {line}")
    sys.stdout.flush()
    return jobs
