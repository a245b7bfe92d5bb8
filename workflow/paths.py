"""Every artifact path of a study, declared once (used by the stages, `rules/common.smk` and `dvc.yaml`).

Paths are relative to the repository root, the working directory of every stage.
"""

from __future__ import annotations

from pathlib import Path


ARTIFACTS = "artifacts"
REPORTS = "reports"


def curated_dir(source: str) -> str:
    return f"{ARTIFACTS}/curated/{source}"


def curate_shard_dir(source: str, part: int | str) -> str:
    """One input file of a source after the per-document filters (`curate-shard`); an intermediate."""
    part = f"{part:05d}" if isinstance(part, int) else part
    return f"{ARTIFACTS}/.curate/{source}/shard-{part}"


def curate_split_dir(source: str) -> str:
    """A source's dedup labels and held-out split (`curate-split`); an intermediate."""
    return f"{ARTIFACTS}/.curate/{source}/split"


def tokenizer_dir() -> str:
    return f"{ARTIFACTS}/tokenizer"


def tokenizer_file() -> str:
    return f"{tokenizer_dir()}/tokenizer.json"


def tokens_prefix(domain: str, split: str = "train", data: str | None = None) -> str:
    """Megatron dataset path prefix (without .bin/.idx): train split `<domain>`, held-out `<domain>.heldout`;
    a data variant's (`quality.selections`, train split only) in its own folder (DVC tracks token folders whole)."""
    if data is not None:
        return f"{ARTIFACTS}/variants/{data}/{domain}"
    return f"{ARTIFACTS}/tokens/{domain}" if split == "train" else f"{ARTIFACTS}/tokens/{domain}.{split}"


def tokens_files(domain: str) -> list[str]:
    """Everything `tokenize` writes for one domain."""
    return [f"{tokens_prefix(domain, s)}.{ext}" for s in ("train", "heldout") for ext in ("bin", "idx")] + [tokens_stats(domain)]


def tokens_stats(domain: str, data: str | None = None) -> str:
    return f"{tokens_prefix(domain, data=data)}.stats.json"


def selected_tokens_files(selection: str, domain: str) -> list[str]:
    """Everything `tokenize_selected` writes for one data variant and domain (its train split)."""
    return [f"{tokens_prefix(domain, data=selection)}.{ext}" for ext in ("bin", "idx")] + [tokens_stats(domain, selection)]


def classifier_dir(scorer: str) -> str:
    """A trained fastText quality classifier (`classifier`): model.bin and stats.json."""
    return f"{ARTIFACTS}/classifier/{scorer}"


def attributes_dir(scorer: str, source: str) -> str:
    """One scorer's per-document scores of one source (`score`): part-*.jsonl.zst of {id, score}, one per curated shard."""
    return f"{ARTIFACTS}/attributes/{scorer}/{source}"


def selected_dir(selection: str) -> str:
    """A data variant (`select`): per source a keep mask over its curated training documents, and stats.json."""
    return f"{ARTIFACTS}/selected/{selection}"


def trunk_root(trunk: str) -> str:
    """One named trunk's checkpoints."""
    return f"{ARTIFACTS}/trunk/{trunk}"


def trunk_dir(trunk: str, step: int | str) -> str:
    return f"{trunk_root(trunk)}/step-{step}"


def decay_dir(branch: str) -> str:
    return f"{ARTIFACTS}/decay/{branch}"


def merge_dir(name: str) -> str:
    return f"{ARTIFACTS}/merge/{name}"


def scratch_dir(kind: str, name: str) -> str:
    """Intermediate (resume) checkpoints of a running job; never a stage output."""
    return f"{ARTIFACTS}/.scratch/{kind}/{name}"


def model_dir(model_id: str) -> str:
    """The directory of `<trunk>@<N>`, `decay-<branch>` or `merge-<name>` (ids are checked where they are read)."""
    if "@" in model_id:
        return trunk_dir(*model_id.split("@", 1))
    kind, key = model_id.split("-", 1)
    return {"decay": decay_dir, "merge": merge_dir}[kind](key)


def is_model_dir(path: str) -> bool:
    """True for a trunk checkpoint's (`artifacts/trunk/<trunk>/step-<N>`), a decay's or a merge's directory (also as a
    DVC template)."""
    p = Path(path)
    return (str(p.parent.parent) == str(Path(trunk_root("x")).parent) and p.name.startswith("step-")) or \
        str(p.parent) in {str(Path(decay_dir("x")).parent), str(Path(merge_dir("x")).parent)}


def model_meta(model_dir_path: str) -> str:
    """A model directory's meta.json: written last, it lists every other file's size and SHA-256."""
    return f"{model_dir_path}/meta.json"


def eval_file(model_id: str) -> str:
    return f"{ARTIFACTS}/eval/{model_id}.json"


def tasks_dir() -> str:
    """Data of the local lm-eval tasks (`eval-tasks`); the task YAMLs in workflow/tasks/ name files in it."""
    return f"{ARTIFACTS}/tasks"


def train_log(model_dir_path: str) -> str:
    return f"{model_dir_path}/train_log.jsonl"


def report_dir() -> str:
    return REPORTS


def report_file() -> str:
    return f"{REPORTS}/summary.md"


def loss_plot() -> str:
    return f"{REPORTS}/plots/loss.png"


def stage_params_dir() -> str:
    """What each DVC stage tracks, one file per stage (`python -m workflow resolve`)."""
    return f"{ARTIFACTS}/params"


def stage_params(dvc_stage: str) -> str:
    """The values of the params keys one DVC stage reads, and a digest of its dependency list."""
    return f"{stage_params_dir()}/{dvc_stage}.json"


def remote_stand_in(url: str) -> str:
    """The local file Snakemake tracks for a remote input (its size and ETag), named by a hash of the URL."""
    import hashlib

    return f"{ARTIFACTS}/.remote/{hashlib.sha1(url.encode()).hexdigest()[:16]}.json"
