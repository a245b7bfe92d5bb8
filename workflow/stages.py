"""The stage table: every stage of a study declared once, as data.

A `Stage` holds its name (the rule, the CLI command, the `resources` key and the DVC stage prefix), the
function it runs, its keys (Snakemake wildcards = CLI options), and three functions of the study:
`instances` (every key it runs for), `inputs` (named lists of paths: the DAG's edges) and `reads` (the
params.yaml keys its outputs depend on: what both engines track, held against what the stage really
reads by tests/integration/test_reads.py). The CLI (`workflow/cli.py`), the Snakemake rules
(`rules/common.smk` through `workflow/engines/snakemake.py`) and `dvc.yaml` (`workflow/engines/dvc.py`)
are generated from it; stage code receives its inputs from here and never re-derives an edge.

Adding a stage: one entry below, one `rules/<name>.smk`, its code (tests/unit/test_stages.py checks all three).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow import hf, paths
from workflow.curate import gather, shard, split
from workflow.curate.readers import source_files
from workflow.evaluate import run as evaluate_run
from workflow.evaluate import taskdata
from workflow.params import TRUNK_LAYOUT, Model, Params, ParamsError, Trunk
from workflow import merge, report, tokenize, tokenizer
from workflow.quality import classifier, score, select
from workflow.train import decay, trunk

Inputs = dict[str, list[str]]

# Keys a stage reads that do not change what it writes, so no engine tracks them (each with its reason).
UNTRACKED = {
    "trunks.*.model.parallel": "the process layout: checkpoints reshard, and DP/PP reproduce one process bit for bit "
                               "(TP changes only the float summation order)",
    "trunks.*.save_interval": "where a job saves resume points; a resumed run ends with the same bytes",
    "trunks.*.log_interval": "how often the job's log prints a line",
    "resources": "what jobs ask the cluster for",
    "dvc": "how dvc.yaml tracks model directories (whole, or by their meta.json): the same bytes either way",
}
# `model` and `trunk` are read only through `trunks` (every named trunk resolved from them): no stage reads them.


def untracked(key: str) -> bool:
    """Whether a dotted key (or a section holding it) is one of UNTRACKED."""
    import fnmatch

    return any(fnmatch.fnmatchcase(key, u) or fnmatch.fnmatchcase(key, u + ".*") for u in UNTRACKED)


@dataclass(frozen=True)
class Key:
    """One key of a stage instance: a Snakemake wildcard and a CLI option `--<name>`."""
    name: str
    help: str
    type: type = str
    pattern: str = r"[a-z0-9][a-z0-9_-]*"


@dataclass(frozen=True)
class Foreach:
    """A DVC `foreach` block over a params collection: `keys` map this stage's keys to DVC templates."""
    items: str                  # e.g. "${decays}"
    keys: dict[str, str]        # e.g. {"branch": "${key}"}
    name: str = ""              # block name suffix when a stage has several blocks (evaluate-trunk, ...)
    when: str = ""              # the params collection that must be non-empty for the block to exist


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., None]
    help: str
    instances: Callable[[Params], list[dict[str, Any]]]
    inputs: Callable[..., Inputs]
    outputs: Callable[..., list[str]]
    reads: Callable[..., list[str]]
    keys: tuple[Key, ...] = ()
    directories: bool = True            # outputs are directories (else files)
    training: bool = False              # runs in the training env, and under torchrun when parallel
    threads: str = "one"                # "one" | "all": cores of a local run when no `resources.<name>.cpus`
    dvc: Callable[[Params], tuple[Foreach, ...]] | None = None  # DVC `foreach` blocks; none: one DVC stage per instance
    run_all: Callable[..., None] | None = None  # DVC runs the instances of each value of the first key as one stage
    run_all_reads: tuple[str, ...] = ()  # what `run_all` reads besides every instance's reads (its list of instances), `{key}` formatted
    dvc_dir_groups: tuple[str, ...] = ()  # input groups DVC depends on by their directory (fewer deps, no regeneration)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def typed(self, key: dict[str, Any]) -> dict[str, Any]:
        """Key values converted to their types (Snakemake wildcards and CLI arguments arrive as strings)."""
        missing = [k.name for k in self.keys if k.name not in key]
        if missing:
            raise ParamsError(f"{self.name}: give --{' --'.join(missing)} (see `python -m workflow {self.name} --help`)")
        return {k.name: k.type(key[k.name]) for k in self.keys}

    def call(self, params: Params, view: Any = None, **kwargs: Any) -> str:
        """Run one instance with the inputs the table gives it (extra keyword arguments go to `run`); without
        its keys, a `run_all` stage runs every instance. `view`: what the stage code reads params through
        (the read recorder); inputs always come from `params`. Returns the instance's label."""
        key = {k: v for k in self.key_names if (v := kwargs.pop(k, None)) is not None}
        if self.run_all is not None and key and self.key_names[0] not in key and len(self.groups(params)) == 1:
            key = {self.key_names[0]: next(iter(self.groups(params))), **key}  # `trunk --step N` of a one-trunk study
        seen = params if view is None else view
        if self.run_all is not None and set(key) <= {self.key_names[0]} and (key or len(self.groups(params)) == 1):
            group = key.get(self.key_names[0]) or next(iter(self.groups(params)))
            if group not in self.groups(params):
                raise ParamsError(f"{self.name} --{self.key_names[0]} {group}: not declared by the study (declared: {', '.join(self.groups(params))})")
            self.run_all(seen, [(k, self.inputs(params, **k)) for k in self.groups(params)[group]], **kwargs)
            return f"{self.name}-{group}"
        check_key(params, self, key)
        key = self.typed(key)
        self.run(seen, **key, inputs=self.inputs(params, **key), **kwargs)
        return self.label(key)

    def groups(self, params: Params) -> dict[str, list[dict[str, Any]]]:
        """A `run_all` stage's instances by the value of its first key (one DVC stage each)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for key in self.instances(params):
            out.setdefault(str(key[self.key_names[0]]), []).append(key)
        return out

    def command(self, key: dict[str, Any]) -> str:
        """The shell command of one instance (both engines run exactly this)."""
        return " ".join(["python -m workflow", self.name, *(f"--{k} {key[k]}" for k in self.key_names if k in key)])

    def label(self, key: dict[str, Any]) -> str:
        """`decay@late`, `curate_shard@prose-00000`, `report`: an instance in messages and recordings."""
        values = [str(key[k]) for k in self.key_names]
        return f"{self.name}@{'-'.join(values)}" if values else self.name


def values(params: Params, keys: list[str]) -> dict[str, Any]:
    """The resolved values (defaults applied) of dotted keys: what an engine tracks for a job."""
    resolved = params.model_dump(mode="json")
    out = {}
    for dotted in keys:
        node: Any = resolved
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


def flat(inputs: Inputs) -> list[str]:
    """All input paths of an instance, in order, once each."""
    return list(dict.fromkeys(p for group in inputs.values() for p in group))


# -- edges -------------------------------------------------------------------------------------------

def _one(params: Params) -> list[dict[str, Any]]:
    return [{}]


def _per_source(params: Params) -> list[dict[str, Any]]:
    return [{"source": s} for s in params.sources]


def shard_groups(params: Params, source: str) -> list[list[str]]:
    """A source's input files in `curate_shard` jobs: consecutive groups of its sorted files, of
    `curation.files_per_job` files or, with `bytes_per_job`, of files until their size reaches it. Appending
    files (sorted after the others) fills the last group, then forms new ones; no other group changes."""
    files, cfg = source_files(params, source), params.curation
    if cfg.bytes_per_job is None:
        return [files[i:i + cfg.files_per_job] for i in range(0, len(files), cfg.files_per_job)]
    from workflow.curate.readers import file_size, listed

    def by_size() -> list[list[str]]:
        groups: list[list[str]] = []
        size = cfg.bytes_per_job
        for f in files:
            if size >= cfg.bytes_per_job:
                groups.append([])
                size = 0
            groups[-1].append(f)
            size += file_size(f)
        return groups

    return listed(("groups", tuple(files), cfg.bytes_per_job), by_size)


def shard_parts(params: Params, source: str) -> list[str]:
    """Part ids of a source: one per group of input files (one, failing on its missing input, when none match)."""
    return [f"{k:05d}" for k in range(max(len(shard_groups(params, source)), 1))]


def shard_dirs(params: Params, source: str) -> list[str]:
    return [paths.curate_shard_dir(source, p) for p in shard_parts(params, source)]


def earlier_sources(params: Params, source: str) -> list[str]:
    """Sources whose kept texts this source's exact dedup skips (`curation.exact_dedup_across_sources`)."""
    names = list(params.sources)
    return names[:names.index(source)] if params.curation.exact_dedup_across_sources else []


def tokens(params: Params, split: str = "train", data: str | None = None) -> list[str]:
    """Every domain's token files of one split (of data variant `data`), and their stats."""
    return [f"{paths.tokens_prefix(d, split, data)}.{ext}" for d in params.domains() for ext in ("bin", "idx")] + \
        [paths.tokens_stats(d, data) for d in params.domains()]


def training_tokens(params: Params, trunk: str) -> list[str]:
    """The token files a trunk and its decays train on: its data variant (`data`), or the whole curated corpus."""
    return tokens(params, data=params.trunks[trunk].data)


def trains_classifier(params: Params, scorer: str) -> bool:
    cfg = params.quality.scorers[scorer]
    return cfg.kind == "fasttext" and cfg.model is None


def previous_checkpoint(params: Params, trunk: str, step: int) -> list[str]:
    """The checkpoint a trunk segment continues from ([] for the first)."""
    steps = list(params.trunks[trunk].checkpoints)
    i = steps.index(step)
    return [paths.trunk_dir(trunk, steps[i - 1])] if i else []


def _curate_shard_inputs(params: Params, source: str, part: str) -> Inputs:
    groups = shard_groups(params, source)
    return {"raw": groups[int(part)] if groups else list(params.sources[source].paths)}


def _curate_split_inputs(params: Params, source: str) -> Inputs:
    return {"shards": shard_dirs(params, source),
            "earlier": [d for s in earlier_sources(params, source) for d in shard_dirs(params, s)]}


def _curate_inputs(params: Params, source: str) -> Inputs:
    decont = params.curation.decontamination
    return {"shards": shard_dirs(params, source), "split": [paths.curate_split_dir(source)],
            "heldout": [paths.curate_split_dir(s) for s in params.sources] if decont and decont.heldout else [],
            "eval_files": list(params.eval.decontaminate_files) if decont else []}


def _tokenizer_inputs(params: Params) -> Inputs:
    user = params.tokenizer.path
    return {"user": [user]} if user else {"curated": [paths.curated_dir(s) for s in params.sources]}


def _tokenize_inputs(params: Params, domain: str) -> Inputs:
    return {"curated": [paths.curated_dir(params.source_of_domain(domain))], "tokenizer": [paths.tokenizer_dir()]}


def _classifier_inputs(params: Params, scorer: str) -> Inputs:
    cfg = params.quality.scorers[scorer]
    return {"positives": [paths.curated_dir(s) for s in cfg.positives],
            "negatives": [paths.curated_dir(s) for s in cfg.negatives]}


def _score_inputs(params: Params, scorer: str, source: str) -> Inputs:
    cfg = params.quality.scorers[scorer]
    return {"curated": [paths.curated_dir(source)],
            "model": [paths.classifier_dir(scorer)] if trains_classifier(params, scorer) else [cfg.model]}


def _select_inputs(params: Params, selection: str) -> Inputs:
    scorer = params.quality.selections[selection].scorer
    return {"scores": [paths.attributes_dir(scorer, s) for s in params.sources]}


def _tokenize_selected_inputs(params: Params, selection: str, domain: str) -> Inputs:
    return {"curated": [paths.curated_dir(params.source_of_domain(domain))], "selected": [paths.selected_dir(selection)],
            "tokenizer": [paths.tokenizer_dir()]}


def init_files(params: Params, trunk: str) -> list[str]:
    """The Hugging Face checkpoint a trunk starts from (`from_hf`), file by file (Snakemake sees a file rewritten
    in a folder, not the folder): an input of every training job of the trunk, whose fingerprint hashes it."""
    directory = params.trunks[trunk].from_hf
    return hf.files(directory) if directory else []


def _trunk_inputs(params: Params, trunk: str, step: int) -> Inputs:
    return {"previous": previous_checkpoint(params, trunk, step), "tokenizer": [paths.tokenizer_dir()],
            "tokens": training_tokens(params, trunk), "init": init_files(params, trunk)}


def _decay_inputs(params: Params, branch: str) -> Inputs:
    trunk = params.trunk_of(f"decay-{branch}")
    return {"parent": [paths.model_dir(params.decays[branch].parent)], "tokenizer": [paths.tokenizer_dir()],
            "tokens": training_tokens(params, trunk), "init": init_files(params, trunk)}


def _merge_inputs(params: Params, name: str) -> Inputs:
    models = params.merge_inputs(name)
    weighs_by_loss = params.merges[name].method == "loss_weighted"
    return {"models": [paths.model_dir(m) for m in models],
            "evals": [paths.eval_file(m) for m in models] if weighs_by_loss else []}


def _eval_tasks_instances(params: Params) -> list[dict[str, Any]]:
    return [{}] if taskdata.uses_local_tasks(params) else []


def _evaluate_inputs(params: Params, model: str) -> Inputs:
    return {"model": [paths.model_dir(model)], "tokenizer": [paths.tokenizer_dir()], "tokens": tokens(params, "heldout"),
            "tasks": [paths.tasks_dir()] if taskdata.uses_local_tasks(params) else []}


def _report_inputs(params: Params) -> Inputs:
    models = params.model_ids()
    selections = params.quality.selections
    return {"evals": [paths.eval_file(m) for m in models],
            "logs": [paths.model_dir(m) for m in models if not m.startswith("merge-")],
            "selections": [paths.selected_dir(s) for s in selections],
            "selected_tokens": [paths.tokens_stats(d, s) for s in selections for d in params.domains()]}


# -- what each stage reads (held against the recorded reads) ------------------------------------------

def trunk_weights(params: Params, trunk: str) -> list[str]:
    """The keys of one trunk its checkpoints' weights depend on (a cosine or linear trunk: its horizon too)."""
    layout = TRUNK_LAYOUT - ({"checkpoints"} if params.trunks[trunk].schedule != "wsd" else set())
    return [f"trunks.{trunk}.{k}" for k in Trunk.model_fields if k not in layout]


def model_keys(params: Params, trunk: str) -> list[str]:
    """The model keys of one trunk every model of it depends on (not the process layout)."""
    return [f"trunks.{trunk}.model.{k}" for k in Model.model_fields if not untracked(f"trunks.{trunk}.model.{k}")]


def owner(params: Params, model_id: str) -> str:
    """The trunk of a model (`Params.trunk_of`) read on the real study, not a recording view: which trunk a model
    belongs to is an edge (its parent's or its inputs' directories), which the engines follow as inputs."""
    from workflow.reads import unwrap

    return unwrap(params).trunk_of(model_id)


def fields(params: Params, dotted: str, *names: str) -> list[str]:
    """`<dotted>.<name>` for each name when the section is set; `<dotted>` itself when it is null."""
    node: Any = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return [f"{dotted}.{n}" for n in names] if node is not None else [dotted]


def domains(params: Params) -> list[str]:
    """Every source's domain: trainers and evaluators name data and metrics by it."""
    return [f"sources.{s}.domain" for s in params.sources]


def _reads_shard(params: Params, source: str, part: str) -> list[str]:
    return [f"sources.{source}.text_key", f"sources.{source}.id_key", f"sources.{source}.steps",
            *(f"curation.{k}" for k in ("normalize", "min_chars", "max_doc_bytes", "steps", "word_tokenizer", "near_dedup"))]


def _reads_split(params: Params, source: str) -> list[str]:
    return [f"sources.{source}.domain", "curation.exact_dedup", "curation.heldout_fraction", "curation.shard_docs",
            *fields(params, "curation.near_dedup", "buckets", "hashes_per_bucket")]


def _reads_curate(params: Params, source: str) -> list[str]:
    return [f"sources.{source}.domain", "curation.shard_docs", *fields(params, "curation.decontamination", "ngram")]


def _reads_tokenize(params: Params, domain: str, selection: str | None = None) -> list[str]:
    return ["tokenizer.eod_token"]


def _reads_classifier(params: Params, scorer: str) -> list[str]:
    return [f"quality.scorers.{scorer}.{k}" for k in ("label", "positives", "negatives", "max_examples", "seed", "epoch",
                                                      "lr", "dim", "word_ngrams", "buckets", "max_chars")]


def _reads_score(params: Params, scorer: str, source: str) -> list[str]:
    """The model itself is an input (a trained classifier's directory, or the declared file or directory)."""
    fasttext = params.quality.scorers[scorer].kind == "fasttext"
    return [f"quality.scorers.{scorer}.{k}" for k in ("kind", "max_chars", *(("label",) if fasttext else ()))]


def training_reads(params: Params, trunk: str) -> list[str]:
    """What every trained model of a trunk depends on: its model, its optimisation, the data's domains and the
    end-of-document token."""
    return [*model_keys(params, trunk), *trunk_weights(params, trunk), *domains(params), "tokenizer.eod_token"]


def _reads_trunk(params: Params, trunk: str, step: int) -> list[str]:
    return training_reads(params, trunk)


def decay_chain(params: Params, branch: str) -> list[str]:
    """A branch and the decays it descends from (their lengths set where it starts)."""
    chain = [branch]
    while params.decays[chain[-1]].parent.startswith("decay-"):
        chain.append(params.decays[chain[-1]].parent[6:])
    return chain


def _reads_decay(params: Params, branch: str) -> list[str]:
    return [*training_reads(params, params.trunk_of(f"decay-{branch}")), *(f"decays.{b}" for b in decay_chain(params, branch))]


def _reads_merge(params: Params, name: str) -> list[str]:
    return [*model_keys(params, params.trunk_of(f"merge-{name}")), "tokenizer.eod_token",
            *(f"merges.{name}.{k}" for k in ("method", "weights", "temperature"))]


def _reads_eval_tasks(params: Params) -> list[str]:
    return ["eval.local_tasks", *domains(params)]


def _reads_evaluate(params: Params, model: str) -> list[str]:
    return [*model_keys(params, params.trunk_of(model)), *domains(params), "tokenizer.eod_token",
            *(f"eval.{k}" for k in ("batch_size", "max_sequences", "tasks", "task_limit", "num_fewshot"))]


def _reads_report(params: Params) -> list[str]:
    """Whole `decays` and `merges`: a new branch needs no new dvc.yaml (the report describes every model); each
    trunk's model shape and training settings (its data variant among them), and the vocabulary, for the estimated
    cost beside the measured one."""
    per_trunk = [k for t in params.trunks for k in (*model_keys(params, t), *trunk_weights(params, t), f"trunks.{t}.checkpoints")]
    return [*dict.fromkeys(per_trunk), "tokenizer.vocab_size", *domains(params), "decays", "merges"]


def checkpoints_key(params: Params, trunk: str) -> str:
    """Where params.yaml lists a trunk's checkpoints (DVC templates name it): its own, or the shared `trunk`'s."""
    return f"trunks.{trunk}.checkpoints" if "checkpoints" in params.trunks[trunk].declared else "trunk.checkpoints"


# -- the table ----------------------------------------------------------------------------------------

SOURCE = Key("source", "a key of `sources`")
DOMAIN = Key("domain", "a domain of `sources`")
SCORER = Key("scorer", "a key of `quality.scorers`")
SELECTION = Key("selection", "a key of `quality.selections`")
STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("curate_shard", shard.run, "Filter one group of a source's input files through the per-document pipeline.",
          instances=lambda p: [{"source": s, "part": k} for s in p.sources for k in shard_parts(p, s)],
          inputs=_curate_shard_inputs, outputs=lambda source, part: [paths.curate_shard_dir(source, part)],
          reads=_reads_shard, keys=(SOURCE, Key("part", "index of the group of input files, 5 digits", pattern=r"\d{5}"))),
    Stage("curate_split", split.run, "Deduplicate a source over its shards (exact + MinHash), draw its held-out split.",
          instances=_per_source, inputs=_curate_split_inputs, outputs=lambda source: [paths.curate_split_dir(source)],
          reads=_reads_split, keys=(SOURCE,)),
    Stage("curate", gather.run, "Decontaminate a source's training documents and write its curated shards.",
          instances=_per_source, inputs=_curate_inputs, outputs=lambda source: [paths.curated_dir(source)],
          reads=_reads_curate, keys=(SOURCE,)),
    Stage("tokenizer", tokenizer.run, "Train (or copy) the byte-level BPE tokenizer.",
          instances=_one, inputs=_tokenizer_inputs, outputs=lambda: [paths.tokenizer_dir()],
          reads=lambda p: ["tokenizer"]),
    Stage("tokenize", tokenize.run, "Write one domain's Megatron .bin/.idx datasets (train + held-out).",
          instances=lambda p: [{"domain": d} for d in p.domains()], inputs=_tokenize_inputs,
          outputs=lambda domain: paths.tokens_files(domain), reads=_reads_tokenize,
          keys=(DOMAIN,), directories=False, threads="all"),
    Stage("classifier", classifier.run, "Train one fastText quality classifier from its positive and negative sources.",
          instances=lambda p: [{"scorer": s} for s in p.quality.scorers if trains_classifier(p, s)],
          inputs=_classifier_inputs, outputs=lambda scorer: [paths.classifier_dir(scorer)], reads=_reads_classifier,
          keys=(SCORER,)),
    Stage("score", score.run, "Score one source's curated documents with one scorer (attribute shards, id -> score).",
          instances=lambda p: [{"scorer": q, "source": s} for q in p.quality.scorers for s in p.sources],
          inputs=_score_inputs, outputs=lambda scorer, source: [paths.attributes_dir(scorer, source)],
          reads=_reads_score, keys=(SCORER, SOURCE)),
    Stage("select", select.run, "Choose one data variant's documents per source from its scorer's scores.",
          instances=lambda p: [{"selection": s} for s in p.quality.selections], inputs=_select_inputs,
          outputs=lambda selection: [paths.selected_dir(selection)],
          reads=lambda p, selection: [f"quality.selections.{selection}"], keys=(SELECTION,)),
    Stage("tokenize_selected", tokenize.run_selected, "Write one data variant's Megatron .bin/.idx of one domain (train split).",
          instances=lambda p: [{"selection": s, "domain": d} for s in p.quality.selections for d in p.domains()],
          inputs=_tokenize_selected_inputs, outputs=lambda selection, domain: paths.selected_tokens_files(selection, domain),
          reads=_reads_tokenize, keys=(SELECTION, DOMAIN), directories=False, threads="all"),
    Stage("trunk", trunk.run, "Train one trunk from its previous checkpoint to this one.",
          instances=lambda p: [{"trunk": t, "step": s} for t in p.trunks for s in p.trunks[t].checkpoints],
          inputs=_trunk_inputs, outputs=lambda trunk, step: [paths.trunk_dir(trunk, step)], reads=_reads_trunk,
          keys=(Key("trunk", "a trunk (a key of `trunks`; `main` without them)"),
                Key("step", "a checkpoint of the trunk", int, r"\d+")), training=True, threads="all",
          dvc_dir_groups=("tokens",),
          run_all=trunk.run_all, run_all_reads=("trunks.{}.checkpoints",)),
    Stage("decay", decay.run, "Train one decay branch from its trunk checkpoint.",
          instances=lambda p: [{"branch": b} for b in p.decays], inputs=_decay_inputs,
          outputs=lambda branch: [paths.decay_dir(branch)], reads=_reads_decay,
          keys=(Key("branch", "a key of `decays`"),), training=True,  # one DVC stage each: DVC cannot template the parent's dir
          dvc_dir_groups=("tokens",)),
    Stage("merge", merge.run, "Average the weights of the models of one merge.",
          instances=lambda p: [{"name": m} for m in p.merge_order()], inputs=_merge_inputs,
          outputs=lambda name: [paths.merge_dir(name)], reads=_reads_merge, keys=(Key("name", "a key of `merges`"),)),
    Stage("eval_tasks", taskdata.run, "Build the data of the local lm-eval tasks (workflow/tasks/) from the held-out split.",
          instances=_eval_tasks_instances, inputs=lambda p: {"curated": [paths.curated_dir(s) for s in p.sources]},
          outputs=lambda: [paths.tasks_dir()], reads=_reads_eval_tasks),
    Stage("evaluate", evaluate_run, "Held-out loss and bits-per-byte of one model, and its lm-eval task scores.",
          instances=lambda p: [{"model": m} for m in p.model_ids()], inputs=_evaluate_inputs,
          outputs=lambda model: [paths.eval_file(model)], reads=_reads_evaluate, directories=False,
          dvc_dir_groups=("tokens",),
          keys=(Key("model", "<trunk>@<N>, decay-<branch> or merge-<name>", pattern=r"[a-z0-9][a-z0-9_-]*@\d+|decay-[a-z0-9][a-z0-9_-]*|merge-[a-z0-9][a-z0-9_-]*"),),
          dvc=lambda p: (*(Foreach("${%s}" % checkpoints_key(p, t), {"model": f"{t}@${{item}}"}, f"trunk-{t}") for t in p.trunks),
                         Foreach("${decays}", {"model": "decay-${key}"}, "decay", when="decays"),
                         Foreach("${merges}", {"model": "merge-${key}"}, "merge", when="merges"))),
    Stage("report", report.run, "Write reports/ (summary.md, summary.html, plots) from every eval and training log.",
          instances=_one, inputs=_report_inputs, outputs=lambda: [paths.report_dir()], reads=_reads_report,
          dvc_dir_groups=("evals", "logs")),
]}


# -- the study as a DAG -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One stage instance of a study."""
    stage: Stage
    key: dict[str, Any] = field(hash=False)

    @property
    def label(self) -> str:
        return self.stage.label(self.key)

    def inputs(self, params: Params) -> Inputs:
        return self.stage.inputs(params, **self.key)

    @property
    def outputs(self) -> list[str]:
        return self.stage.outputs(**self.key)

    @property
    def command(self) -> str:
        return self.stage.command(self.key)


def jobs(params: Params) -> list[Job]:
    """Every stage instance of the study, in table order (a topological order of the DAG)."""
    return [Job(stage, key) for stage in STAGES.values() for key in stage.instances(params)]


def producers(params: Params) -> dict[str, Job]:
    """Output path -> the job that writes it."""
    return {out: job for job in jobs(params) for out in job.outputs}


def check_key(params: Params, stage: Stage, key: dict[str, Any]) -> None:
    """ParamsError unless `key` names an instance the study declares (the CLI's one argument check)."""
    key = stage.typed(key)
    declared = stage.instances(params)
    if key not in declared:
        shown = ", ".join("-".join(str(v) for v in k.values()) for k in declared) or "none"
        arg = " ".join(f"--{k} {v}" for k, v in key.items())
        raise ParamsError(f"{stage.name} {arg}: not declared by the study (declared: {shown})")


def check_resources(params: Params) -> None:
    """`resources` may only name stages."""
    for name in params.resources:
        if name not in STAGES:
            raise ParamsError(f"resources.{name}: not a stage (stages: {', '.join(STAGES)})")


def call(params: Params, stage: str, /, **kwargs: Any) -> None:
    """Run one instance of `stage` in-process with the inputs the table gives it (see `Stage.call`)."""
    STAGES[stage].call(params, **kwargs)


def build(params: Params, stage: str, /, **key: Any) -> None:
    """Run one instance after every job it needs, in-process and in DAG order, whether or not they ran before.
    For tests and benchmarks: a study runs under its engines, which skip what is up to date."""
    check_key(params, STAGES[stage], key)
    target = Job(STAGES[stage], STAGES[stage].typed(key))
    producers_ = producers(params)
    needed, todo = {target.label: target}, [target]
    while todo:
        job = todo.pop()
        for path in flat(job.inputs(params)):
            upstream = producers_.get(path)
            if upstream is None and "://" not in path and not Path(path).exists():
                raise FileNotFoundError(f"missing input of {job.label}: {path}")
            if upstream is not None and upstream.label not in needed:
                needed[upstream.label] = upstream
                todo.append(upstream)
    for job in jobs(params):
        if job.label in needed:
            job.stage.call(params, **job.key)
