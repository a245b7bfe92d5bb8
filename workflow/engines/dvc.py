"""dvc.yaml from the stage table, and the params file each of its stages tracks.

Each DVC stage tracks one small file as a whole, `artifacts/params/<stage>.json`: the resolved values
(params.yaml with every default filled in) of exactly the keys the stage reads, and a digest of its
inputs (DVC ignores a dependency that disappears from dvc.yaml: a source removed, a merge input dropped;
the digest makes the stage re-run). The first stage, `resolve`, writes them (deps: params.yaml,
the schema, the folders the sources' globs read). So the study file stays as the user wrote it, reordering
keys or spelling out a default re-runs nothing, and `dvc status` reads one small JSON file per stage (DVC
looks up every listed key by walking the whole params file: a shared file made a no-op status quadratic in
the number of stages).

Stages are `foreach` blocks where the table declares them (decays, evaluations: new branches and trunk
checkpoints need no regeneration), one stage per instance otherwise, and the trunk one stage that resumes
(`run_all`). A last-k merge names its checkpoints `${trunk.checkpoints[-k]}`, the report the directories
holding its inputs, so extending the trunk needs no regeneration either. What DVC's templating cannot
follow (a new source, raw file or merge, a merge's inputs) makes `resolve` stop before any stage runs,
with one line saying what changed; `python -m workflow dvc-yaml` (or any `snakemake` run) regenerates.
"""

from __future__ import annotations

import hashlib
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
# regenerates it too): do not edit. Each stage tracks artifacts/params/<stage>.json (the resolved values of the
# params it reads, a digest of its inputs), written by the `resolve` stage, which also stops `dvc repro`
# when this file is out of date.
"""


def resolved(params: Params) -> dict[str, Any]:
    """The study as the stages see it: params.yaml with every default filled in (runtime `resources` left out, and
    the shared `model` and `trunk`, which stages see only as resolved into each of `trunks`)."""
    return params.model_dump(mode="json", exclude={"resources", "model", "trunk"})


class _Item:
    """One item of a DVC `foreach`: every field reads as DVC's `${item.<field>}`."""

    def __getattr__(self, name: str) -> str:
        return f"${{item.{name}}}"


class _Tail(list):
    """A trunk's checkpoints whose last k items (`[-k:]`, `[-1]`) read as DVC's `${trunk.checkpoints[-i]}` (or
    `${trunks.<name>.checkpoints[-i]}` where the trunk lists its own)."""

    def __init__(self, value: list, key: str) -> None:
        super().__init__(value)
        self.key = key

    def __getitem__(self, index):
        if isinstance(index, slice) and index.stop is None and (index.start or 0) < 0:
            return [f"${{{self.key}[{i}]}}" for i in range(index.start, 0)]
        if isinstance(index, int) and index < 0:
            return f"${{{self.key}[{index}]}}"
        return super().__getitem__(index)


class _Templates(Hook):
    """Renders a stage's inputs as DVC templates: foreach items (`decays["${key}"]`) and the trunks' tails."""

    def __init__(self, params: Params) -> None:
        self.params = params

    def value(self, key: str, value: Any) -> Any:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "trunks" and parts[2] == "checkpoints":
            return _Tail(value, stages.checkpoints_key(self.params, parts[1]))
        return value

    def missing(self, key: str, name: str) -> Any:
        if name.startswith("${"):
            return _Item()
        raise KeyError(name)


def _tracked_path(params: Params, path: str) -> str:
    """What DVC tracks for `path`: the path, or a model directory's meta.json in `dvc.checkpoints: manifest` mode."""
    return paths.model_meta(path) if params.dvc.checkpoints == "manifest" and paths.is_model_dir(path) else path


def _deps(params: Params, stage: stages.Stage, inputs: stages.Inputs) -> list[str]:
    """A stage's DVC dependencies: its inputs, the groups of `stage.dvc_dir_groups` by the directories holding them
    (fewer dependencies to check, and new items there need no new dependency list), except model directories
    in manifest mode (a directory dependency would hash every checkpoint byte)."""
    deps: list[str] = []
    for group, files in inputs.items():
        tracked = [_tracked_path(params, f) for f in files]
        by_dir = group in stage.dvc_dir_groups and tracked == files
        deps += [str(Path(f).parent) for f in files] if by_dir else tracked
    return list(dict.fromkeys(deps))


def _block_name(stage: stages.Stage, block: stages.Foreach) -> str:
    return f"{stage.name}-{block.name}" if block.name else stage.name


def _placeholder(block: stages.Foreach) -> str:
    """The `${key}`/`${item}` a foreach block names its items by."""
    template = next(iter(block.keys.values()))
    return "${" + template.split("${", 1)[1].split("}", 1)[0] + "}"


def stage_name(stage: stages.Stage, key: dict[str, Any], params: Params) -> str:
    """The DVC stage that runs one instance: `trunk-main` (one per trunk), `decay@late` (a foreach item), `merge-lawa`."""
    if stage.run_all is not None:
        return f"{stage.name}-{key[stage.key_names[0]]}"
    for block in stage.dvc(params) if stage.dvc else ():
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


def _digest(deps: list[str]) -> str:
    return hashlib.sha256(json.dumps(deps).encode()).hexdigest()[:16]


INPUTS = "_inputs"  # the key of a params file holding the digest of the stage's inputs


def _tracked(params: Params, keys: list[str], inputs: list[str]) -> dict[str, Any]:
    """The content of one stage's params file: the values of the keys it reads (`dvc status` names a changed
    one), and under `_inputs` a digest of its inputs."""
    return {**stages.values(params, list(dict.fromkeys(keys))), INPUTS: _digest(inputs)}


def _layout(params: Params) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the `stages` of dvc.yaml, {params file: content} of every DVC stage instance)."""
    tpl = view(params, _Templates(params))
    files: dict[str, dict[str, Any]] = {}
    st: dict[str, Any] = {RESOLVE: {"cmd": f"{CLI} {RESOLVE}", "deps": ["params.yaml", "workflow/params.py", *source_roots(params)],
                                    "outs": [paths.stage_params_dir()]}}

    def add(name: str, cmd: str, deps: list[str], outs: list[Any], file: str) -> dict[str, Any]:
        st[name] = {"cmd": cmd, "deps": deps, "params": [{paths.stage_params(file): None}], "outs": outs}
        return st[name]

    for stage in stages.STAGES.values():
        jobs = [stages.Job(stage, key) for key in stage.instances(params)]
        if not jobs:
            continue
        if stage.run_all is not None:  # one stage per trunk: it resumes from its last valid checkpoint
            for group, keys_ in stage.groups(params).items():
                jobs = [stages.Job(stage, key) for key in keys_]
                name = stage_name(stage, keys_[0], params)
                outs = [o for job in jobs for o in job.outputs]
                # the folder holding every output (new ones need no new dvc.yaml), or each meta.json in manifest mode
                tracked = [_tracked_path(params, o) for o in outs]
                deps = list(dict.fromkeys(d for job in jobs for d in _deps(params, stage, job.inputs(params)) if d not in tracked))
                persisted = [str(Path(outs[0]).parent)] if tracked == outs else tracked
                add(name, f"{CLI} {stage.name} --{stage.key_names[0]} {group}", deps,
                    [{o: {"persist": True}} for o in persisted], name)
                keys = [k for job in jobs for k in stage.reads(params, **job.key)] + [r.format(group) for r in stage.run_all_reads]
                files[name] = _tracked(params, keys, [i for job in jobs for i in stages.flat(job.inputs(params))])
        elif stage.dvc:
            for block in stage.dvc(params):
                if block.when and not getattr(params, block.when):
                    continue
                name = _block_name(stage, block)
                deps = _deps(params, stage, stage.inputs(tpl, **block.keys))
                outs = [_tracked_path(params, o) for o in stage.outputs(**block.keys)]
                body = add(name, stage.command(block.keys), deps, outs, f"{name}@{_placeholder(block)}")
                st[name] = {"foreach": block.items, "do": body}
                for job in jobs:
                    if stage_name(stage, job.key, params).startswith(f"{name}@"):
                        files[stage_name(stage, job.key, params)] = _tracked(params, stage.reads(params, **job.key),
                                                                     stages.flat(job.inputs(params)))
        else:
            for job in jobs:
                deps, name = _deps(params, stage, job.inputs(tpl)), stage_name(stage, job.key, params)
                add(name, job.command, deps, [_tracked_path(params, o) for o in job.outputs], name)
                files[name] = _tracked(params, stage.reads(params, **job.key), stages.flat(job.inputs(params)))
    return st, {paths.stage_params(name): content for name, content in files.items()}


def document(params: Params) -> dict[str, Any]:
    """`dvc.yaml` as a mapping."""
    return {"metrics": [f"{paths.ARTIFACTS}/eval"], "plots": train_plots(params), "stages": _layout(params)[0]}


def stage_files(params: Params) -> dict[str, str]:
    """Every DVC stage's params file: path -> text."""
    return {path: json.dumps(content, indent=1, sort_keys=True) + "\n" for path, content in _layout(params)[1].items()}


def train_plots(params: Params) -> list[dict[str, Any]]:
    """`dvc plots`: each trunk's per-step curves (loss, lr, grad_norm; dvclive tsv files) from its last checkpoint,
    whose log covers every step (templated, so new checkpoints need no regeneration)."""
    return [{f"{paths.trunk_dir(t, '${%s[-1]}' % stages.checkpoints_key(params, t))}/dvclive/plots/metrics": {"x": "step"}}
            for t in params.trunks]


def render(params: Params) -> str:
    return HEADER + yaml.safe_dump(document(params), sort_keys=False, width=1000)


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
    """Write every stage's params file whose content changed, delete those of stages gone; returns what changed."""
    files = stage_files(params)
    written = [path for path, text in files.items() if _write_if_changed(path, text)]
    folder = Path(paths.stage_params_dir())
    for stale in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if str(stale) not in files:
            stale.unlink(missing_ok=True)  # a concurrent sync (snakemake -n beside dvc-yaml) may have removed it
            written.append(str(stale))
    return written


def sync(params: Params, path: str = "dvc.yaml") -> list[str]:
    """Bring `dvc.yaml` and the stages' params files up to date with the study; returns what was rewritten."""
    written = [path] if _write_if_changed(path, render(params)) else []
    return written + write_resolved(params)
