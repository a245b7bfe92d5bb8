"""dvc.yaml from the stage table, and the resolved params its stages track.

Every stage tracks its params in `artifacts/params.json`: params.yaml with every default filled in, written
by the first stage, `resolve` (deps: params.yaml, the schema, the folders the sources' globs read), and its
own entry of `artifacts/dependencies.json` (its dependency and key lists: DVC ignores a dependency that
disappears from dvc.yaml, so a removed input would otherwise re-run nothing). So the
study file stays as the user wrote it, spelling out a default or reordering keys re-runs nothing, and DVC
parses one JSON file instead of re-reading the YAML study once per stage (the no-op cost of `dvc status`).

Stages are `foreach` blocks where the table declares them (decays, evaluations: new branches and trunk
checkpoints need no regeneration), one stage per instance otherwise, and the trunk one stage that resumes
(`run_all`). A last-k merge names its checkpoints `${trunk.checkpoints[-k]}`, the report the directories
holding its inputs, so extending the trunk needs no regeneration either. What DVC's templating cannot
follow (a new source, raw file or merge, a merge's inputs) makes `resolve` stop before any stage runs,
with one line saying what changed; `python -m workflow dvc-yaml` (or any `snakemake` run) regenerates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from workflow import paths, stages
from workflow.io import atomic_file
from workflow.params import Params, ParamsError
from workflow.reads import Hook, view

CLI = "python -m workflow"
RESOLVE = "resolve"
HEADER = """\
# GENERATED from params.yaml by `python -m workflow dvc-yaml` (workflow/engines/dvc.py; any `snakemake` run
# regenerates it too): do not edit. Stages track their params in artifacts/params.json (params.yaml with every
# default filled in), written by the `resolve` stage, which also stops `dvc repro` when this file is out of date.
"""


def resolved(params: Params) -> dict[str, Any]:
    """The study as every stage sees it: params.yaml with every default filled in (runtime `resources` left out)."""
    return params.model_dump(mode="json", exclude={"resources"})


def resolved_text(params: Params) -> str:
    return json.dumps(resolved(params), indent=1, sort_keys=True) + "\n"


class _Item:
    """One item of a DVC `foreach`: every field reads as DVC's `${item.<field>}`."""

    def __getattr__(self, name: str) -> str:
        return f"${{item.{name}}}"


class _Tail(list):
    """`trunk.checkpoints` whose last k items (`[-k:]`, `[-1]`) read as DVC's `${trunk.checkpoints[-i]}`."""

    def __getitem__(self, index):
        if isinstance(index, slice) and index.stop is None and (index.start or 0) < 0:
            return [f"${{trunk.checkpoints[{i}]}}" for i in range(index.start, 0)]
        if isinstance(index, int) and index < 0:
            return f"${{trunk.checkpoints[{index}]}}"
        return super().__getitem__(index)


class _Templates(Hook):
    """Renders a stage's inputs as DVC templates: foreach items (`decays["${key}"]`) and the trunk's tail."""

    def value(self, key: str, value: Any) -> Any:
        return _Tail(value) if key == "trunk.checkpoints" else value

    def missing(self, key: str, name: str) -> Any:
        if name.startswith("${"):
            return _Item()
        raise KeyError(name)


def _params_dep(name: str, keys: list[str]) -> list[dict[str, list[str]]]:
    return [{paths.resolved_params(): list(dict.fromkeys(keys))}] * bool(keys) + [{paths.stage_dependencies(): [name]}]


def _dir_deps(inputs: list[str]) -> list[str]:
    """The directories holding `inputs` (new items in them need no new dependency list)."""
    return list(dict.fromkeys(str(Path(p).parent) for p in inputs))


def _stage(name: str, cmd: str, deps: list[str], keys: list[str], outs: list[Any]) -> dict[str, Any]:
    return {"cmd": cmd, "deps": deps, "params": _params_dep(name, keys), "outs": outs}


def _block_name(stage: stages.Stage, block: stages.Foreach) -> str:
    return f"{stage.name}-{block.name}" if block.name else stage.name


def stage_name(stage: stages.Stage, key: dict[str, Any]) -> str:
    """The DVC stage that runs one instance: `trunk` (one for all), `decay@late` (a foreach item), `merge-lawa`."""
    if stage.run_all is not None:
        return stage.name
    for block in stage.dvc:
        item = None
        for name, template in block.keys.items():
            head, _, tail = template.partition("${")
            tail = tail.partition("}")[2]
            value = str(key[name])
            if value.startswith(head) and value.endswith(tail) and len(value) > len(head) + len(tail):
                item = value[len(head):len(value) - len(tail)]
        if item is not None:
            return f"{_block_name(stage, block)}@{item}"
    return "-".join([stage.name, *(str(v) for v in key.values())])


def source_roots(params: Params) -> list[str]:
    """The local folders the sources' globs read: a new raw file there makes `resolve` re-check dvc.yaml."""
    roots = []
    for source in params.sources.values():
        for pattern in source.paths:
            if "://" in pattern:
                continue
            fixed = []
            for part in Path(pattern).parts:
                if any(c in part for c in "*?["):
                    break
                fixed.append(part)
            root = Path(*fixed) if fixed else Path(".")
            roots.append(str(root if root.is_dir() or not fixed else root.parent))
    return list(dict.fromkeys(roots))


def document(params: Params) -> dict[str, Any]:
    """`dvc.yaml` as a mapping."""
    tpl = view(params, _Templates())
    st: dict[str, Any] = {RESOLVE: {"cmd": f"{CLI} {RESOLVE}", "deps": ["params.yaml", "workflow/params.py", *source_roots(params)],
                                    "outs": [paths.resolved_params(), paths.stage_dependencies()]}}
    for stage in stages.STAGES.values():
        jobs = [stages.Job(stage, key) for key in stage.instances(params)]
        if not jobs:
            continue
        if stage.run_all is not None:  # one stage for every instance: the trunk resumes from its last valid checkpoint
            outs = [o for job in jobs for o in job.outputs]
            root = str(Path(outs[0]).parent)
            deps = [d for job in jobs for d in stages.flat(job.inputs(params)) if d not in outs]
            keys = [k for job in jobs for k in stage.reads(params, **job.key)] + list(stage.run_all_reads)
            st[stage.name] = _stage(stage.name, f"{CLI} {stage.name}", list(dict.fromkeys(deps)), keys,
                                    [{root: {"persist": True}}])
        elif stage.dvc:
            for block in stage.dvc:
                if block.when and not getattr(params, block.when):
                    continue
                name = _block_name(stage, block)
                body = _stage(name, stage.command(block.keys), stages.flat(stage.inputs(tpl, **block.keys)),
                              stage.reads(tpl, **block.keys), stage.outputs(**block.keys))
                st[name] = {"foreach": block.items, "do": body}
        else:
            for job in jobs:
                deps, name = stages.flat(job.inputs(tpl)), stage_name(stage, job.key)
                st[name] = _stage(name, job.command, _dir_deps(deps) if stage.dvc_dir_deps else deps,
                                  stage.reads(params, **job.key), job.outputs)
    return {"metrics": [f"{paths.ARTIFACTS}/eval"], "plots": train_plots(), "stages": st}


def train_plots() -> list[dict[str, Any]]:
    """`dvc plots`: the trunk's per-step curves (loss, lr, grad_norm; dvclive tsv files) from its last checkpoint,
    whose log covers every step (templated, so new checkpoints need no regeneration)."""
    return [{f"{paths.trunk_dir('${trunk.checkpoints[-1]}')}/dvclive/plots/metrics": {"x": "step"}}]


def render(params: Params) -> str:
    return HEADER + yaml.safe_dump(document(params), sort_keys=False, width=1000)


def dependencies(doc: dict[str, Any]) -> dict[str, Any]:
    """Each stage's (or foreach block's) dependencies and params keys as dvc.yaml lists them. Every stage tracks
    its own entry, because DVC compares only what dvc.yaml still lists: a dependency or key that disappears
    (a source removed, a merge input dropped, decontamination switched off) would otherwise re-run nothing."""
    out = {}
    for name, stage in doc["stages"].items():
        if name == RESOLVE:
            continue
        body = stage.get("do", stage)
        keys = [k for p in body.get("params", []) for f, ks in p.items() if f == paths.resolved_params() for k in ks]
        out[name] = {"deps": body.get("deps", []), "params": keys}
    return out


def dependencies_text(params: Params) -> str:
    return json.dumps(dependencies(document(params)), indent=1, sort_keys=True) + "\n"


def difference(params: Params, path: str = "dvc.yaml") -> str | None:
    """What `path` lacks against the study (None when it is current), in one line."""
    if not Path(path).exists():
        return f"{path} is missing"
    text = Path(path).read_text()
    if text == render(params):
        return None
    old = (yaml.safe_load(text) or {}).get("stages", {})
    new = document(params)["stages"]
    added, removed = [s for s in new if s not in old], [s for s in old if s not in new]
    changed = [s for s in new if s in old and old[s] != new[s]]
    parts = [f"{label}: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
             for label, names in (("new stages", added), ("stages gone", removed), ("stages changed", changed)) if names]
    return "; ".join(parts) or "its header or layout differs"


def check(params: Params, path: str = "dvc.yaml") -> None:
    """ParamsError naming what changed when `path` no longer matches the study."""
    diff = difference(params, path)
    if diff is not None and Path(path).exists():
        raise ParamsError(f"{path} is out of date with params.yaml ({diff}): run `python -m workflow dvc-yaml` "
                          "(any `snakemake` run regenerates it too), then `dvc repro` again")


def _write_if_changed(path: str, text: str) -> bool:
    if Path(path).exists() and Path(path).read_text() == text:
        return False
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(text)
    return True


def write_resolved(params: Params) -> list[str]:
    """Write `artifacts/params.json` and `artifacts/dependencies.json` where they changed; returns those written."""
    files = ((paths.resolved_params(), resolved_text(params)), (paths.stage_dependencies(), dependencies_text(params)))
    return [path for path, text in files if _write_if_changed(path, text)]


def sync(params: Params, path: str = "dvc.yaml") -> list[str]:
    """Bring `dvc.yaml` and what its stages track up to date with the study; returns what was rewritten."""
    written = [path] if _write_if_changed(path, render(params)) else []
    return written + write_resolved(params)
