"""The study's stages, declared once: what each reads (files, params keys), writes and runs.

`rules/*.smk` use `inputs()`/`param_keys()` for their input functions and tracked params;
`dvc.yaml` is generated from `stages()`. DVC's templating can interpolate a scalar but not a
list of dependencies, so a merge's inputs cannot be expressed with `foreach`: the file is
generated (with `foreach` wherever DVC can express the stage) and every stage command refuses
to run when `dvc.yaml` no longer matches `params.yaml`.

Curation is three kinds of jobs, the same in both engines: `curate-shard` per input file,
`curate-split` per source (its global exact + MinHash dedup and held-out split), and `curate` per
source (decontamination against every source's held-out split, then the output).

Granularity differs in one place: Snakemake runs one trunk job per segment
(`trunk --step N`, fits SLURM walltimes), DVC runs one `trunk` stage that owns
`artifacts/trunk/` and resumes from its last valid checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workflow import paths
from workflow.evaluate.taskdata import uses_local_tasks
from workflow.io import atomic_file
from workflow.params import Params, ParamsError, Trunk

CLI = "python -m workflow"
# Trunk settings that do not change the weights of an existing checkpoint (see train fingerprint).
TRUNK_LAYOUT_KEYS = {"checkpoints", "save_interval", "log_interval"}
TRUNK_WEIGHT_KEYS = [f"trunk.{k}" for k in Trunk.model_fields if k not in TRUNK_LAYOUT_KEYS]


# -- what each stage reads -------------------------------------------------------------------

def param_keys(stage: str, key: str | None = None) -> list[str]:
    """Dotted params.yaml keys a stage reads (DVC `params:`; Snakemake tracks their values)."""
    return {
        "curate_shard": [f"sources.{key}", "curation"],
        "curate_split": [f"sources.{key}", "curation"],
        "curate": [f"sources.{key}", "curation", "eval.decontaminate_files"],
        "tokenizer": ["tokenizer"],
        "tokenize": [f"sources.{key}.domain", "tokenizer.eod_token"],
        "trunk": ["model", "trunk"],
        "decay": ["model", *TRUNK_WEIGHT_KEYS, f"decays.{key}"],
        "merge": [f"merges.{key}"],
        "eval_tasks": ["eval.local_tasks"],
        "evaluate": ["model", "eval"],
        "report": ["model.seq_length", "trunk.checkpoints", "trunk.global_batch_size", "trunk.lr", "decays", "merges"],
    }[stage]


def param_values(params: Params, keys: list[str]) -> dict[str, Any]:
    """The resolved values (defaults applied) of dotted keys: what Snakemake tracks per job."""
    resolved = params.model_dump(mode="json")
    out = {}
    for dotted in keys:
        node: Any = resolved
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


def tracked_keys(params: Params) -> list[str]:
    """Every dotted key some stage of the study reads (DVC's `params:` over all stages)."""
    keys = [k for s in params.sources for stage in ("curate", "tokenize") for k in param_keys(stage, s)]
    keys += param_keys("tokenizer") + param_keys("trunk") + param_keys("evaluate") + param_keys("report")
    keys += [k for b in params.decays for k in param_keys("decay", b)]
    keys += [k for m in params.merges for k in param_keys("merge", m)]
    return list(dict.fromkeys(keys))


def fill_defaults(params: Params, path: str | Path = "params.yaml") -> list[str]:
    """Write the schema defaults of every tracked key that `path` leaves out (comments kept).

    DVC compares the params it tracks as written in params.yaml and refuses keys that are
    absent, so the study file must spell out every value a stage reads. Returns the added keys.
    """
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    doc = yaml_rt.load(Path(path).read_text())
    missing = missing_keys(params, doc)
    if not missing:
        return []
    resolved = params.model_dump(mode="json")
    for dotted in missing:
        *parents, leaf = dotted.split(".")
        node, default = doc, resolved
        for part in parents:
            node, default = node.setdefault(part, {}), default[part]
        node[leaf] = default[leaf]
    with atomic_file(path) as f:
        yaml_rt.dump(doc, f)
    return missing


def missing_keys(params: Params, raw: dict[str, Any]) -> list[str]:
    """Tracked keys (or their leaves) that the raw study mapping does not spell out."""
    resolved = params.model_dump(mode="json")
    out = []

    def walk(node: Any, default: Any, dotted: str) -> None:
        if isinstance(node, dict) and isinstance(default, dict):
            for k, v in default.items():
                if k not in node:
                    out.append(f"{dotted}.{k}")
                else:
                    walk(node[k], v, f"{dotted}.{k}")

    for dotted in tracked_keys(params):
        node, default = raw, resolved
        for part in dotted.split("."):
            default = default[part]
            node = node.get(part) if isinstance(node, dict) and part in node else _MISSING
            if node is _MISSING:
                break
        if node is _MISSING:
            out.append(dotted)
        else:
            walk(node, default, dotted)
    return list(dict.fromkeys(out))  # tracked keys overlap (`trunk` and `trunk.lr`)


_MISSING = object()


def match_pattern(pattern: str) -> list[str]:
    """Files matching one `sources.<s>.paths` entry (a local glob or an fsspec URL), sorted."""
    if "://" in pattern:
        import fsspec

        fs, _, found = fsspec.get_fs_token_paths(pattern)
        return sorted(fs.unstrip_protocol(p) for p in found if fs.isfile(p))
    import glob
    import os

    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


def source_files(params: Params, source: str) -> list[str]:
    """A source's input files in shard order (`curate-shard --part K` reads the K-th)."""
    return sorted({f for pattern in params.sources[source].paths for f in match_pattern(pattern)})


def curate_parts(params: Params, source: str) -> list[str]:
    """Shard ids of a source: one per input file (one, failing on the missing input, when none match)."""
    return [f"{k:05d}" for k in range(max(len(source_files(params, source)), 1))]


def curate_shard_dirs(params: Params, source: str) -> list[str]:
    return [paths.curate_shard_dir(source, part) for part in curate_parts(params, source)]


def tokens_inputs(params: Params, split: str = "train") -> list[str]:
    return [f"{paths.tokens_prefix(d, split)}.{ext}" for d in params.domains() for ext in ("bin", "idx")] + \
        [paths.tokens_stats(d) for d in params.domains()]


def previous_checkpoint(params: Params, step: int) -> int | None:
    steps = list(params.trunk.checkpoints)
    i = steps.index(step)
    return steps[i - 1] if i else None


def evaluate_data(params: Params) -> list[str]:
    """What every evaluate job reads besides its model: tokenizer, held-out tokens, and the local tasks' data
    (`eval-tasks`) when `eval.tasks` lists a local task."""
    tasks = [paths.tasks_dir()] if uses_local_tasks(params) else []
    return [paths.tokenizer_dir(), *tokens_inputs(params, "heldout"), *tasks]


def inputs(params: Params, stage: str, key: Any = None) -> list[str]:
    """Input files/dirs of one stage instance (the engines' edges)."""
    if stage == "curate_shard":  # key = (source, part)
        files = source_files(params, key[0])
        return [files[int(key[1])]] if files else list(params.sources[key[0]].paths)
    if stage == "curate_split":  # + earlier sources' shards when exact dedup spans sources
        names = list(params.sources)
        earlier = names[:names.index(key)] if params.curation.exact_dedup_across_sources else []
        return [d for s in [*earlier, key] for d in curate_shard_dirs(params, s)]
    if stage == "curate":  # + every source's held-out split (decontamination) and the eval task files
        decont = params.curation.decontamination
        splits = [paths.curate_split_dir(s) for s in params.sources] if decont and decont.heldout else []
        return list(dict.fromkeys([*curate_shard_dirs(params, key), paths.curate_split_dir(key), *splits,
                                   *(params.eval.decontaminate_files if decont else [])]))
    if stage == "tokenizer":
        return [paths.curated_dir(s) for s in params.sources]
    if stage == "tokenize":
        return [paths.curated_dir(key), paths.tokenizer_dir()]
    if stage == "trunk":  # one Snakemake segment; key = step (None: DVC's whole trunk)
        prev = previous_checkpoint(params, key) if key is not None else None
        return ([paths.trunk_dir(prev)] if prev else []) + [paths.tokenizer_dir(), *tokens_inputs(params)]
    if stage == "decay":
        return [paths.trunk_dir(params.decays[key].from_step), paths.tokenizer_dir(), *tokens_inputs(params)]
    if stage == "merge":  # loss_weighted also reads its inputs' evals (their held-out losses)
        models = params.merge_inputs(key)
        evals = [paths.eval_file(m) for m in models] if params.merges[key].method == "loss_weighted" else []
        return [paths.model_dir(m) for m in models] + evals
    if stage == "eval_tasks":  # the local lm-eval tasks' data comes from every source's held-out split
        return [paths.curated_dir(s) for s in params.sources]
    if stage == "evaluate":
        return [paths.model_dir(key), *evaluate_data(params)]
    if stage == "report":  # evals + the trained models' dirs (their train_log.jsonl)
        return [paths.eval_file(m) for m in params.model_ids()] + \
            [paths.model_dir(m) for m in params.model_ids() if not m.startswith("merge-")]
    raise KeyError(stage)



# -- DVC ----------------------------------------------------------------------------------------

def _stage(cmd: str, deps: list[str], params: list[str], outs: list[Any]) -> dict[str, Any]:
    return {"cmd": cmd, "deps": deps, "params": params, "outs": outs}


def _foreach(items: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"foreach": items, "do": body}


def dvc_document(params: Params) -> dict[str, Any]:
    """`dvc.yaml` as a mapping. `foreach` over params wherever DVC's templating can express the
    stage; explicit stages where a dependency list varies per item (a source's files, a merge's
    inputs), which DVC cannot interpolate."""
    train_tokens = tokens_inputs(params)
    st: dict[str, Any] = {}
    for s in params.sources:
        for part in curate_parts(params, s):
            st[f"curate-shard-{s}-{part}"] = _stage(f"{CLI} curate-shard --source {s} --part {part}", inputs(params, "curate_shard", (s, part)),
                                                    param_keys("curate_shard", s), [paths.curate_shard_dir(s, part)])
        st[f"curate-split-{s}"] = _stage(f"{CLI} curate-split --source {s}", inputs(params, "curate_split", s),
                                         param_keys("curate_split", s), [paths.curate_split_dir(s)])
    for s in params.sources:
        st[f"curate-{s}"] = _stage(f"{CLI} curate --source {s}", inputs(params, "curate", s), param_keys("curate", s), [paths.curated_dir(s)])
    st["tokenizer"] = _stage(f"{CLI} tokenizer", inputs(params, "tokenizer"), param_keys("tokenizer"), [paths.tokenizer_dir()])
    st["tokenize"] = _foreach("${sources}", _stage(
        f"{CLI} tokenize --source ${{key}}", inputs(params, "tokenize", "${key}"), param_keys("tokenize", "${key}"),
        paths.tokens_files("${item.domain}")))
    st["trunk"] = _stage(f"{CLI} trunk", inputs(params, "trunk"), param_keys("trunk"), [{paths.trunk_root(): {"persist": True}}])
    if params.decays:
        st["decay"] = _foreach("${decays}", _stage(
            f"{CLI} decay --branch ${{key}}", [paths.trunk_dir("${item.from_step}"), paths.tokenizer_dir(), *train_tokens],
            param_keys("decay", "${key}"), [paths.decay_dir("${key}")]))
    for m in params.merge_order():
        st[f"merge-{m}"] = _stage(f"{CLI} merge --name {m}", inputs(params, "merge", m), param_keys("merge", m), [paths.merge_dir(m)])
    if uses_local_tasks(params):
        st["eval-tasks"] = _stage(f"{CLI} eval-tasks", inputs(params, "eval_tasks"), param_keys("eval_tasks"), [paths.tasks_dir()])
    for kind, items, key, model_path in (
            ("trunk", "${trunk.checkpoints}", "${item}", paths.trunk_dir("${item}")),
            ("decay", "${decays}", "${key}", paths.decay_dir("${key}")),
            ("merge", "${merges}", "${key}", paths.merge_dir("${key}"))):
        if kind == "decay" and not params.decays or kind == "merge" and not params.merges:
            continue
        st[f"evaluate_{kind}"] = _foreach(items, _stage(
            f"{CLI} evaluate --model {kind}-{key}", [model_path, *evaluate_data(params)],
            param_keys("evaluate"), [paths.eval_file(f"{kind}-{key}")]))  # cached: artifacts/ is git-ignored, the remote carries metrics to a clone
    report_deps = [f"{paths.ARTIFACTS}/eval", paths.trunk_root()] + ([f"{paths.ARTIFACTS}/decay"] if params.decays else [])
    st["report"] = _stage(f"{CLI} report", report_deps, param_keys("report"), [paths.report_dir()])
    return {"metrics": [f"{paths.ARTIFACTS}/eval"], "plots": train_plots(), "stages": st}


def train_plots() -> list[dict[str, Any]]:
    """`dvc plots`: the trunk's per-step curves (loss, lr, grad_norm; dvclive tsv files) from its
    last checkpoint, whose log covers every step (templated, so new checkpoints need no regeneration)."""
    return [{f"{paths.trunk_dir('${trunk.checkpoints[-1]}')}/dvclive/plots/metrics": {"x": "step"}}]


HEADER = """\
# GENERATED from params.yaml by `python -m workflow dvc-yaml` (workflow/dag.py): do not edit.
# Value edits (e.g. `dvc exp run -S decays.early.steps=60`) and new decays or trunk checkpoints
# need no regeneration; adding or removing a source or a merge, or changing a merge's inputs, does
# (every stage checks).
"""


def render_dvc_yaml(params: Params) -> str:
    return HEADER + yaml.safe_dump(dvc_document(params), sort_keys=False, width=1000)


def write_dvc_yaml(params: Params, out: str = "dvc.yaml", params_file: str = "params.yaml") -> bool:
    """Write `dvc.yaml` if it differs (and the defaults DVC needs into params.yaml); returns whether it changed."""
    added = fill_defaults(params, params_file)
    if added:
        print(f"{params_file}: wrote the defaults of {len(added)} keys DVC tracks ({', '.join(added[:6])}{', ...' if len(added) > 6 else ''})")
    text = render_dvc_yaml(params)
    if Path(out).exists() and Path(out).read_text() == text:
        return False
    with atomic_file(out) as f:
        f.write(text)
    print(f"wrote {out}")
    return True


def check_dvc_yaml(params: Params, path: str = "dvc.yaml", params_file: str = "params.yaml") -> None:
    """Raise ParamsError when `dvc.yaml` exists but no longer matches params.yaml, or params.yaml
    leaves out a value DVC tracks."""
    if not Path(path).exists():
        return
    if Path(path).read_text() != render_dvc_yaml(params):
        raise ParamsError(f"{path} is out of date with params.yaml (a source or merge was added or removed): "
                          f"run `python -m workflow dvc-yaml`")
    missing = missing_keys(params, yaml.safe_load(Path(params_file).read_text()))
    if missing:
        raise ParamsError(f"{params_file}: DVC tracks keys the file leaves to their defaults ({', '.join(missing[:6])}"
                          f"{', ...' if len(missing) > 6 else ''}): run `python -m workflow dvc-yaml` to write them")
