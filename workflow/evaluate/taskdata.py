"""`eval_tasks`: the data of the local lm-eval tasks (`workflow/tasks/*.yaml`), from the curated held-out split.

Writes `artifacts/tasks/` atomically::

    cloze.jsonl     arbor_cloze    {"domain", "doc", "context", "choices", "label"}
    heldout.jsonl   arbor_heldout  {"domain", "doc", "text"}
    meta.json       settings and counts per domain

Only held-out documents are used (curation keeps them out of training and decontaminates training
against them), so no model of the study has seen a task item. The construction is deterministic
(seeded by `eval.local_tasks.seed`) and independent of the tokenizer; workflow/tasks/README.md
describes it.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

import yaml

from workflow import faults, paths
from workflow.errors import StageError
from workflow.io import atomic_dir, read_jsonl, write_json
from workflow.params import LocalTasks, Params

CLOZE_FILE = "cloze.jsonl"
HELDOUT_FILE = "heldout.jsonl"
WORD = re.compile(r"\s*\S+")  # a word with the whitespace before it: joining pieces gives the text back
ATTEMPTS = 20  # tries per wanted item before a domain is declared too small
TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"  # the local task YAMLs


@lru_cache(maxsize=1)
def local_tasks() -> dict[str, list[str]]:
    """Local task name -> the data files (relative to the repo root) its YAML reads."""
    out = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        files = spec.get("dataset_kwargs", {}).get("data_files", {})
        out[spec["task"]] = sorted(files.values()) if isinstance(files, dict) else [files]
    return out


def uses_local_tasks(params: Params) -> bool:
    """Whether `eval.tasks` names a local task (then `evaluate` depends on this stage's output)."""
    return any(t in local_tasks() for t in params.eval.tasks)


def heldout_docs(source: str) -> list[str]:
    """The texts of a source's curated held-out split, in shard order."""
    from workflow.tokenize import shards

    return [rec["text"] for shard in shards(source, "heldout") for rec in read_jsonl(shard) if rec.get("text")]


def cut(text: str, chars: int) -> str:
    """`text` cut to at most `chars` characters, at the last word boundary when it is cut."""
    if len(text) <= chars:
        return text
    head = text[:chars]
    boundary = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return (head[:boundary] if boundary > 0 else head).rstrip()


def _leading_space(piece: str) -> str:
    return piece[: len(piece) - len(piece.lstrip())]


def cloze_items(docs: list[str], domain: str, cfg: LocalTasks) -> list[dict]:
    """Up to `cfg.examples` items: `context_words` words of a held-out document, then `choices` options of
    `continuation_words` words each: the true continuation and spans of other held-out documents of the
    domain (of the same document, far from the blank, when the domain has one), every option starting
    with the whitespace the true continuation starts with."""
    span = cfg.context_words + cfg.continuation_words
    pieces = [WORD.findall(d) for d in docs]
    eligible = [i for i, p in enumerate(pieces) if len(p) >= span]
    if not eligible:
        return []
    rng = random.Random(f"{cfg.seed}/cloze/{domain}")
    items: list[dict] = []
    used: set[tuple[int, int]] = set()
    for attempt in range(ATTEMPTS * cfg.examples):
        if len(items) == cfg.examples:
            break
        doc = eligible[attempt % len(eligible)]
        start = rng.randrange(len(pieces[doc]) - span + 1)
        if (doc, start) in used:
            continue
        blank = start + cfg.context_words
        answer = "".join(pieces[doc][blank: blank + cfg.continuation_words])
        space = _leading_space(answer)
        options = [answer]
        for _ in range(ATTEMPTS * cfg.choices):
            if len(options) == cfg.choices:
                break
            other = rng.choice([i for i in eligible if i != doc] or [doc])
            at = rng.randrange(len(pieces[other]) - cfg.continuation_words + 1)
            if other == doc and abs(at - blank) < span:
                continue
            option = space + "".join(pieces[other][at: at + cfg.continuation_words]).lstrip()
            if option not in options:
                options.append(option)
        if len(options) < cfg.choices:
            continue
        used.add((doc, start))
        label = rng.randrange(cfg.choices)
        options[0], options[label] = options[label], options[0]
        context = "".join(pieces[doc][start:blank]).lstrip()
        items.append({"domain": domain, "doc": doc, "context": context, "choices": options, "label": label})
    return items


def heldout_items(docs: list[str], domain: str, cfg: LocalTasks) -> list[dict]:
    """The first `cfg.examples` held-out documents of a domain, each cut to `cfg.doc_chars` characters."""
    out = []
    for i, text in enumerate(docs):
        if len(out) == cfg.examples:
            break
        text = cut(text, cfg.doc_chars)
        if text.strip():
            out.append({"domain": domain, "doc": i, "text": text})
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(params: Params, *, inputs: dict[str, list[str]]) -> None:
    """Build `artifacts/tasks/` from every source's held-out split."""
    cfg = params.eval.local_tasks
    cloze, heldout, counts = [], [], {}
    for source, spec in params.sources.items():
        if not Path(paths.curated_dir(source)).is_dir():
            raise FileNotFoundError(f"{paths.curated_dir(source)} is missing: run `python -m workflow curate --source {source}` first")
        docs = heldout_docs(source)
        c, h = cloze_items(docs, spec.domain, cfg), heldout_items(docs, spec.domain, cfg)
        cloze += c
        heldout += h
        counts[spec.domain] = {"heldout_docs": len(docs), "cloze": len(c), "heldout": len(h)}
    if not cloze or not heldout:
        raise StageError(f"the held-out splits hold no document of at least {cfg.context_words + cfg.continuation_words} words "
                         f"(per-domain counts: {counts}): lower eval.local_tasks.context_words / continuation_words "
                         "or raise curation.heldout_fraction")
    with atomic_dir(paths.tasks_dir()) as tmp:
        _write_jsonl(tmp / CLOZE_FILE, cloze)
        faults.point("eval_tasks.write")
        _write_jsonl(tmp / HELDOUT_FILE, heldout)
        write_json(tmp / "meta.json", {"settings": cfg.model_dump(mode="json"), "domains": counts})
    short = [d for d, n in counts.items() if n["cloze"] < cfg.examples]
    print(f"[eval_tasks] {len(cloze)} cloze items, {len(heldout)} held-out documents over {len(counts)} domains → "
          f"{paths.tasks_dir()}/" + (f" (fewer than {cfg.examples} items in: {', '.join(short)})" if short else ""))
