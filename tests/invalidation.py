"""Helpers of the invalidation matrix (tests/integration/test_invalidation.py): perturb one key of a study,
ask each engine what it would re-run, and say what it should re-run.

Expected, from behaviour rather than from the table's declarations: the jobs whose *recorded* reads
(`ARBOR_RECORD_READS`, workflow/reads.py) touch the changed key, the jobs whose inputs (edges) changed or that
are new, and, for Snakemake (which plans whole chains), every job downstream of those. `dvc status` judges
each stage on its own dependencies, so for DVC the expectation is those jobs' stages without descendants.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import multiprocessing as mp
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from workflow import stages
from workflow.engines import dvc as dvc_engine
from workflow.params import Params, ParamsError, parse_params

UNTRACKED = tuple(stages.UNTRACKED)


# -- keys -------------------------------------------------------------------------------------------------

def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a resolved study (a non-empty mapping is not a leaf)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: node}


def expand(keys: set[str] | frozenset[str], resolved: dict[str, Any]) -> set[str]:
    """Dotted keys (sections or leaves) -> the leaves of the resolved study they cover."""
    all_leaves = leaves(resolved)
    out = set()
    for key in keys:
        out |= {leaf for leaf in all_leaves if leaf == key or leaf.startswith(key + ".")}
    return out


def untracked(key: str) -> bool:
    return stages.untracked(key)


def related(a: str, b: str) -> bool:
    """One key is the other or lies inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def normalized(key: str) -> str:
    """`decays.late.shape` -> `decays.*.shape`: a key of any instance of a collection."""
    parts = key.split(".")
    if parts[0] in ("sources", "decays", "merges", "trunks") and len(parts) > 1:
        parts[1] = "*"
    if parts[0] == "quality" and len(parts) > 2:  # quality.scorers.<name>, quality.selections.<name>
        parts[2] = "*"
    return ".".join(parts)


# -- perturbations ----------------------------------------------------------------------------------------

def annotation(dotted: str) -> Any:
    """The schema's type annotation of a dotted key (Any inside free-form mappings)."""
    node: Any = Params
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        node = _optional_inner(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(parts[i])
            if field is None:
                return Any
            node, i = field.annotation, i + 1
        elif typing.get_origin(node) is dict:
            node, i = typing.get_args(node)[1], i + 1
        else:
            return Any
    return node


def _optional_inner(t: Any) -> Any:
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType")) and len(args) == 1:
        return args[0]
    if typing.get_origin(t) is typing.Annotated:
        return typing.get_args(t)[0]
    return t


def candidates(key: str, value: Any) -> list[Any]:
    """Other values for `key`, most natural first; the first that validates is used."""
    t = annotation(key)
    inner = _optional_inner(t)
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) is Literal:
        return [c for c in typing.get_args(inner) if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, max(value - 1, 0), 1, 64]
    if isinstance(value, float):
        return [round(value * 1.5, 6) if value else 0.001, round(value / 2, 6), round(value + 0.05, 6), 0.1]
    if isinstance(value, str):
        return [value + "x"]
    if isinstance(value, dict):  # a mixture or a steps override: change its first value
        k = next(iter(value))
        return [{**value, k: v} for v in candidates(f"{key}.{k}", value[k])] if value else []
    if isinstance(value, list):
        if value and isinstance(value[0], list):  # [n, fraction] pairs: change the first fraction
            return [[[value[0][0], round(value[0][1] + 0.01, 6)], *value[1:]]]
        if value and isinstance(value[0], (int, float)):
            return [[value[0] * 2, *value[1:]]]
        if value and isinstance(value[0], str):
            return [[*value, value[0] + "x"], value[:-1]]
        return []
    if value is None:
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return [inner().model_dump(mode="json") if not _required(inner) else {"steps": 2}]
        return [1, 0.5, 0.001, {"prose": 1.0}, ["<|x|>"]]
    return []


def _required(model: type[BaseModel]) -> bool:
    return any(f.is_required() for f in model.model_fields.values())


# Keys whose natural perturbation needs the study's own values (globs, ids, files, lists).
SPECIAL: dict[str, Callable[[Any, dict], list[Any]]] = {
    "trunks.*.checkpoints": lambda v, raw: [[*v, v[-1] + 12]],
    "sources.*.paths": lambda v, raw: [[p.removesuffix("t") + "*" for p in v]],  # a glob matching the same files
    "eval.tasks": lambda v, raw: [v[:1]],
    "eval.decontaminate_files": lambda v, raw: [["data/sample/SOURCES.md"]],
    "tokenizer.path": lambda v, raw: ["user-tokenizer.json"],
    "trunks.*.from_hf": lambda v, raw: ["user-hf"],
    "tokenizer.special_tokens": lambda v, raw: [["<|user|>"]],
    "decays.*.parent": lambda v, raw: [f"main@{c}" for c in raw["trunk"]["checkpoints"] if f"main@{c}" != v],
    "trunk.data": lambda v, raw: [s for s in raw.get("quality", {}).get("selections", {}) if s != v],
    "trunks.*.data": lambda v, raw: [s for s in raw.get("quality", {}).get("selections", {}) if s != v],
    "merges.*.models": lambda v, raw: [[*v[:-1], m] for m in ("decay-late", "main@24", "decay-short") if m not in v] if v else [],
    # switching the mode changes what dvc.yaml declares as outputs (`dvc commit -f` records them, nothing
    # re-runs); the mode has its own matrix (test_invalidation.py::test_manifest_mode_flags_what_the_cache_mode_flags)
    "dvc.checkpoints": lambda v, raw: [],
}
USER_TOKENIZER = "user-tokenizer.json"  # the matrix copies the study's tokenizer here for `tokenizer.path`
USER_CLASSIFIER = "user-classifier.bin"  # ... and its trained classifier here, for a scorer's ready `model`
USER_HF = "user-hf"  # ... and exports main@12 here, for a trunk's `from_hf`
COLLECTIONS = ("sources", "decays", "merges", "trunks", "quality.scorers", "quality.selections")


def special(key: str) -> Callable | None:
    for pattern, fn in SPECIAL.items():
        if fnmatch.fnmatchcase(key, pattern):
            return fn
    return None


def set_key(raw: dict, dotted: str, value: Any) -> dict:
    """A copy of the user's study mapping with one dotted key set (parents created as needed)."""
    out = copy.deepcopy(raw)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return out


@dataclass
class Edit:
    name: str
    raw: dict          # the edited study mapping
    key: str | None    # the perturbed key (None: a structural edit)


def perturbations(raw: dict, resolved: dict[str, Any]) -> tuple[list[Edit], dict[str, str]]:
    """One valid edit per leaf of the resolved study, and the leaves no single-key edit can change (with why)."""
    edits, skipped = [], {}
    first = next(iter(resolved["trunks"]))
    for key, value in leaves(resolved).items():
        parts = key.split(".")
        if parts[0] == "trunks" and parts[1] != first and parts[2] not in (raw.get("trunks") or {}).get(parts[1], {}):
            continue  # another trunk's shared settings: the same code paths as the first trunk's, once is enough
        fn = special(key)
        if fn is not None:
            tried = fn(value, raw)
        elif value is None and fnmatch.fnmatchcase(key, "sources.*.steps.*"):
            tried = [{}]  # a step a source switches off: switch it on with its defaults
        else:
            tried = candidates(key, value)
        for new in [t for t in tried if t != value]:
            edited = set_key(raw, key, new)
            try:
                parse_params(edited)
            except ParamsError as err:
                reason = str(err).splitlines()[0]
                continue
            edits.append(Edit(f"{key}: {value!r} -> {new!r}", edited, key))
            break
        else:
            skipped[key] = reason if tried else "no other value"
    return edits, skipped


# -- what should re-run ------------------------------------------------------------------------------------

def job_inputs(params: Params) -> dict[str, list[str]]:
    return {job.label: stages.flat(job.inputs(params)) for job in stages.jobs(params)}


def descendants(params: Params, roots: set[str]) -> set[str]:
    producers = stages.producers(params)
    children: dict[str, set[str]] = {}
    for label, inputs in job_inputs(params).items():
        for path in inputs:
            if path in producers:
                children.setdefault(producers[path].label, set()).add(label)
    out, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@dataclass
class Expected:
    snakemake: set[str]
    dvc: set[str]


def changed_keys(old: Params, new: Params) -> set[str]:
    """Leaves whose resolved value differs, appeared or disappeared."""
    a, b = leaves(dvc_engine.resolved(old)), leaves(dvc_engine.resolved(new))
    return {k for k in set(a) | set(b) if a.get(k, a) != b.get(k, b)}


def changed_collections(old: Params, new: Params) -> set[str]:
    def items(params: Params, dotted: str) -> list[str]:
        node: Any = params
        for part in dotted.split("."):
            node = getattr(node, part)
        return list(node)

    return {c for c in COLLECTIONS if items(old, c) != items(new, c)}


def expected(old: Params, new: Params, reads: dict[str, set[str]], present: dict[str, set[str]],
             collections: dict[str, set[str]], before: dict[str, list[str]] | None = None) -> Expected:
    """What each engine should plan after the edit old -> new, from the recorded reads (`reads`: keys per job
    label; `present`: optional sections it tested for; `collections`: the mappings whose items it iterated).
    `before`: every job's inputs before the edit, when the edit changed files rather than params."""
    before, after = before if before is not None else job_inputs(old), job_inputs(new)
    roots = {label for label, inputs in after.items() if before.get(label) != inputs}  # new jobs, moved edges
    keys = {k for k in changed_keys(old, new) if not untracked(k)}
    grown = changed_collections(old, new)
    roots |= {label for label in after if any(related(k, r) for k in keys for r in reads.get(label, ()))
              or keys & present.get(label, set())  # a section that appeared or disappeared: its own key changed
              or grown & collections.get(label, set())}
    jobs = {job.label: job for job in stages.jobs(new)}
    to_dvc = {label: dvc_engine.stage_name(jobs[label].stage, jobs[label].key, new) for label in jobs}
    dvc_roots = {to_dvc[label] for label in roots}
    for stage in stages.STAGES.values():  # a stage run as one per trunk also reads its list of instances
        if stage.run_all is not None:
            for group in stage.groups(new):
                if any(related(k, r.format(group)) for k in keys for r in stage.run_all_reads):
                    dvc_roots.add(f"{stage.name}-{group}")
    return Expected(descendants(new, roots), dvc_roots)


# -- what the engines plan ---------------------------------------------------------------------------------

def _snakemake_plan(repo: str, queue) -> None:
    from workflow.engines.why import plan
    from workflow.params import load_params

    with contextlib.chdir(repo):
        try:
            queue.put(sorted(s.label for s in plan(load_params("params.yaml"))))
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            queue.put(f"error: {err!r}")


def _dvc_status(repo: str, queue) -> None:
    from dvc.repo import Repo

    with contextlib.chdir(repo):
        try:
            with Repo(".") as dvc:
                queue.put(sorted(set(dvc.status()) - {dvc_engine.RESOLVE}))
        except BaseException as err:  # noqa: BLE001
            queue.put(f"error: {err!r}")


def plans(repo: Path) -> tuple[set[str], set[str]]:
    """(jobs `snakemake -n` would run, stages `dvc status` flags after dvc.yaml and the stages' params files are
    brought up to date), each from a fresh fork (Snakemake keeps state between in-process runs), both at once."""
    from workflow.params import load_params

    with contextlib.chdir(repo):  # what `python -m workflow dvc-yaml` or any snakemake start does first
        dvc_engine.sync(load_params("params.yaml"))
    ctx = mp.get_context("fork")
    results = []
    for target in (_snakemake_plan, _dvc_status):
        q = ctx.Queue()
        proc = ctx.Process(target=target, args=(str(repo), q))
        proc.start()
        results.append((proc, q))
    out = []
    for proc, q in results:
        value = q.get(timeout=300)
        proc.join()
        if isinstance(value, str):
            raise AssertionError(value)
        out.append(set(value))
    return out[0], out[1]


def write_study(repo: Path, raw: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
