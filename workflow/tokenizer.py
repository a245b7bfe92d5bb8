"""Build the study's tokenizer: `artifacts/tokenizer/{tokenizer.json, meta.json}`.

- `tokenizer.path` set: that `tokenizer.json` is copied byte for byte (after checking it loads
  and knows `tokenizer.eod_token` and `tokenizer.special_tokens`); nothing is trained.
- otherwise: a byte-level BPE (HF `tokenizers`; ByteLevel pre-tokenizer and decoder, no
  normaliser since curation already normalised) is trained on a deterministic sample of at most
  `tokenizer.sample_bytes` of curated *training* text (never held-out text). Each source gets a
  share of the budget proportional to its training bytes; within a source a document is taken
  when the hash of its id falls under the source's share, in shard order, until the share is
  spent (the last document is cut at a character boundary). The EOD token gets id 0 and
  `tokenizer.special_tokens` the ids after it.

`meta.json` records the vocabulary size, the EOD id, the special tokens' ids and the sample.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from workflow import integrity, paths
from workflow.io import atomic_dir, read_json, read_jsonl, write_json
from workflow.params import Params, ParamsError


def training_shards(curated: str) -> list[str]:
    """The training shards of one curated source dir (held-out shards live in `heldout/`)."""
    return sorted(glob.glob(os.path.join(curated, "part-*.jsonl.zst")))


def _curated_bytes(curated: str) -> int:
    stats_path = Path(curated) / "stats.json"
    source = Path(curated).name
    if not stats_path.exists():
        raise FileNotFoundError(f"{stats_path} is missing: run `python -m workflow curate --source {source}` first")
    stats = read_json(stats_path)
    integrity.verify_meta(stats, stats_path.parent, f"curate --source {source}")  # the shards we sample
    return int(stats["bytes_out"])


def _hash_unit(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2**64


def sample_texts(curated: list[str], sample_bytes: int) -> Iterator[str]:
    """Yields the training sample: the curated source dirs in order, at most their byte share each."""
    totals = {d: _curated_bytes(d) for d in curated}
    budgets = plan_budgets(sample_bytes, totals)
    for directory in curated:
        source, budget, total = Path(directory).name, budgets[directory], totals[directory]
        if budget <= 0:
            continue
        rate = budget / total if total else 1.0
        left = budget
        for shard in training_shards(directory):
            for rec in read_jsonl(shard):
                text = rec["text"]
                if rate < 1.0 and _hash_unit(f"{source}\0{rec['id']}") >= rate:
                    continue
                data = text.encode("utf-8")
                if len(data) > left:
                    text = data[:left].decode("utf-8", errors="ignore")
                    data = text.encode("utf-8")
                if data:
                    yield text
                left -= len(data)
                if left <= 0:
                    break
            if left <= 0:
                break


def plan_budgets(sample_bytes: int, totals: dict[str, int]) -> dict[str, int]:
    """Splits `sample_bytes` over sources in proportion to their training bytes (never more than they have)."""
    grand = sum(totals.values())
    if grand <= sample_bytes:
        return dict(totals)
    return {s: min(t, sample_bytes * t // grand) for s, t in totals.items()}


def _check_loads(path: str, eod_token: str, key: str, special_tokens: list[str] = ()) -> "object":
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise ParamsError(f"{key}: '{path}' is not a loadable HF tokenizer.json ({err})") from None
    if tok.token_to_id(eod_token) is None:
        raise ParamsError(f"tokenizer.eod_token: '{eod_token}' is not in the vocabulary of '{path}'; "
                          f"set tokenizer.eod_token to the tokenizer's end-of-document token")
    missing = [t for t in special_tokens if tok.token_to_id(t) is None]
    if missing:
        raise ParamsError(f"tokenizer.special_tokens: {missing} are not in the vocabulary of '{path}'; "
                          f"remove them or use a tokenizer that has them")
    return tok


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int, eod_token: str, show_progress: bool = False,
              special_tokens: list[str] = ()):
    """A byte-level BPE trained on `texts`; deterministic for a given input. Special tokens: EOD first (id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eod_token, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def run(params: Params, *, inputs: dict[str, list[str]]) -> None:
    """Writes `paths.tokenizer_dir()` (tokenizer.json + meta.json) atomically: trained on a sample of the curated
    source dirs `inputs["curated"]`, or copied from `tokenizer.path`."""
    cfg = params.tokenizer
    t0 = time.perf_counter()
    if cfg.path:
        if not os.path.isfile(cfg.path):
            raise ParamsError(f"tokenizer.path: '{cfg.path}' does not exist (relative to {os.getcwd()})")
        tok = _check_loads(cfg.path, cfg.eod_token, "tokenizer.path", cfg.special_tokens)
        with atomic_dir(paths.tokenizer_dir()) as tmp:
            shutil.copyfile(cfg.path, tmp / "tokenizer.json")
            meta = _meta(tok, cfg.eod_token, trained=False, sample_bytes=0, sample_docs=0, sources={},
                         user_path=cfg.path, special_tokens=cfg.special_tokens)
            write_json(tmp / "meta.json", meta)
        print(f"tokenizer: using {cfg.path} as is (vocab {meta['vocab_size']:,}, eod id {meta['eod_id']}) "
              f"-> {paths.tokenizer_file()}")
        return

    curated = inputs["curated"]
    totals = {d: _curated_bytes(d) for d in curated}
    budgets = plan_budgets(cfg.sample_bytes, totals)
    counted = {"bytes": 0, "docs": 0}

    def counting(texts: Iterator[str]) -> Iterator[str]:
        for t in texts:
            counted["bytes"] += len(t.encode("utf-8"))
            counted["docs"] += 1
            yield t

    tok = train_bpe(counting(sample_texts(curated, cfg.sample_bytes)), cfg.vocab_size, cfg.min_frequency, cfg.eod_token,
                    show_progress=sys.stderr.isatty(), special_tokens=cfg.special_tokens)
    if counted["docs"] == 0:
        raise RuntimeError("tokenizer: the curated training shards hold no text; check the curate stats of "
                           + ", ".join(curated))
    with atomic_dir(paths.tokenizer_dir()) as tmp:
        tok.save(str(tmp / "tokenizer.json"), pretty=True)
        meta = _meta(tok, cfg.eod_token, trained=True, sample_bytes=counted["bytes"], sample_docs=counted["docs"],
                     sources={Path(d).name: {"curated_dir": d, "train_bytes": totals[d], "sample_budget": budgets[d]}
                              for d in curated},
                     special_tokens=cfg.special_tokens)
        write_json(tmp / "meta.json", meta)
    dt = time.perf_counter() - t0
    print(f"tokenizer: trained byte-level BPE, vocab {meta['vocab_size']:,} (asked {cfg.vocab_size:,}), "
          f"eod id {meta['eod_id']}, on {counted['bytes'] / 1e6:.1f} MB / {counted['docs']:,} docs in {dt:.1f}s "
          f"-> {paths.tokenizer_file()}")


def _meta(tok, eod_token: str, *, trained: bool, sample_bytes: int, sample_docs: int, sources: dict,
          user_path: str | None = None, special_tokens: list[str] = ()) -> dict:
    return {
        "special_tokens": {t: tok.token_to_id(t) for t in special_tokens},
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "eod_token": eod_token,
        "eod_id": tok.token_to_id(eod_token),
        "trained": trained,
        "user_path": user_path,
        "sample_bytes": sample_bytes,
        "sample_docs": sample_docs,
        "sources": sources,
    }


def load(path: str | None = None):
    """The study tokenizer (for tokenize/evaluate)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path or paths.tokenizer_file())


__all__ = ["run", "load", "train_bpe", "sample_texts", "plan_budgets", "training_shards"]
