"""Tokenize one curated source into Megatron indexed datasets (read as is by Megatron-LM/NeMo).

    artifacts/tokens/<domain>.bin/.idx           training documents
    artifacts/tokens/<domain>.heldout.bin/.idx   held-out documents
    artifacts/tokens/<domain>.stats.json         written last: its presence marks completion

One Megatron "document" per curated document (one sequence each), the EOD token appended.
Token dtype: uint16 when the vocabulary has fewer than 65,500 entries, else int32.

Streaming: a reader thread decompresses and parses shards into batches (bounded queue) while
the main thread runs `encode_batch` (which releases the GIL and uses every core) and appends
to megatron-core's `IndexedDatasetBuilder`. Memory is bounded by a few batches plus the index
(one length per document).

Atomicity: everything is written under `<name>.tmp-<pid>`; the old stats file is removed
first, then the four data files are moved into place, then the stats file. A kill at any point
leaves no stats file next to data files, so nothing looks complete.
"""

from __future__ import annotations

import glob
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from workflow import paths
from workflow.io import read_jsonl, write_json
from workflow.params import Params, ParamsError

BATCH_DOCS = 512
BATCH_BYTES = 4 << 20
UINT16_LIMIT = 65_500


def token_dtype(vocab_size: int) -> type[np.number]:
    return np.uint16 if vocab_size < UINT16_LIMIT else np.int32


def shards(source: str, split: str) -> list[str]:
    root = Path(paths.curated_dir(source))
    sub = root if split == "train" else root / "heldout"
    return sorted(glob.glob(str(sub / "part-*.jsonl.zst")))


def _batches(files: list[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for f in files:
        for rec in read_jsonl(f):
            text = rec["text"]
            batch.append(text)
            size += len(text)
            if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _prefetch(it: Iterator[list[str]], depth: int = 2) -> Iterator[list[str]]:
    """Runs `it` in a thread so reading/decompression overlaps encoding."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # surfaced in the consumer
            q.put(err)

    thread = threading.Thread(target=work, daemon=True, name="tokenize-reader")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _encode(tok, texts: list[str]) -> list[list[int]]:
    fast = getattr(tok, "encode_batch_fast", None)
    encs = (fast or tok.encode_batch)(texts, add_special_tokens=False)
    return [e.ids for e in encs]


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def write_split(tok, eod: int, dtype, files: list[str], prefix: str,
                progress: Callable[[int, int], None] = lambda tokens, docs: None) -> dict:
    """Tokenizes `files` into `<prefix>.bin/.idx` under temporary names; returns counts."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    bin_tmp, idx_tmp = _tmp(prefix + ".bin"), _tmp(prefix + ".idx")
    builder = IndexedDatasetBuilder(bin_tmp, dtype=dtype)
    docs = tokens = nbytes = 0
    try:
        for texts in _prefetch(_batches(files)):
            batch_tokens = 0
            for text, ids in zip(texts, _encode(tok, texts)):
                ids.append(eod)
                builder.add_document(np.asarray(ids, dtype=dtype), [len(ids)])
                batch_tokens += len(ids)
                nbytes += len(text.encode("utf-8"))
            docs += len(texts)
            tokens += batch_tokens
            progress(batch_tokens, len(texts))
        builder.finalize(idx_tmp)
        for p in (bin_tmp, idx_tmp):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        builder.data_file.close()
        for p in (bin_tmp, idx_tmp):
            Path(p).unlink(missing_ok=True)
        raise
    return {"documents": docs, "tokens": tokens, "bytes": nbytes}


def run(params: Params, source: str) -> None:
    """Tokenizes `sources[source]` (train + held-out) with the study tokenizer."""
    if source not in params.sources:
        raise ParamsError(f"sources.{source}: unknown source; declared sources are {sorted(params.sources)}")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401  (slow import, before timing)
    from tokenizers import Tokenizer
    from tqdm import tqdm

    domain = params.sources[source].domain
    tok_file = paths.tokenizer_file()
    if not os.path.isfile(tok_file):
        raise FileNotFoundError(f"{tok_file} is missing: run the tokenizer stage first")
    curated = Path(paths.curated_dir(source))
    if not (curated / "stats.json").is_file():
        raise FileNotFoundError(f"{curated}/stats.json is missing: run the curate stage for source '{source}' first")
    tok = Tokenizer.from_file(tok_file)
    eod = tok.token_to_id(params.tokenizer.eod_token)
    if eod is None:
        raise ParamsError(f"tokenizer.eod_token: '{params.tokenizer.eod_token}' is not in {tok_file}")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    splits = {"train": shards(source, "train"), "heldout": shards(source, "heldout")}
    stats_path = paths.tokens_stats(domain)
    Path(stats_path).parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    counts: dict[str, dict] = {}
    bar = tqdm(unit="tok", unit_scale=True, desc=f"tokenize {source}", disable=None, mininterval=1.0, file=sys.stderr)
    n_docs = 0

    def progress(tokens: int, docs: int) -> None:
        nonlocal n_docs
        n_docs += docs
        bar.set_postfix_str(f"{n_docs:,} docs", refresh=False)
        bar.update(tokens)

    try:
        with bar:
            for split, files in splits.items():
                counts[split] = write_split(tok, eod, dtype, files, paths.tokens_prefix(domain, split), progress)
    except BaseException:
        for split in splits:
            for ext in (".bin", ".idx"):
                Path(_tmp(paths.tokens_prefix(domain, split) + ext)).unlink(missing_ok=True)
        raise

    # Publish: stats gone first, then data files, then stats (the completion marker).
    Path(stats_path).unlink(missing_ok=True)
    for split in splits:
        prefix = paths.tokens_prefix(domain, split)
        for ext in (".bin", ".idx"):
            os.replace(_tmp(prefix + ext), prefix + ext)
    write_json(stats_path, {"domain": domain, "source": source, "vocab_size": vocab,
                            "dtype": np.dtype(dtype).name, "eod": eod, "train": counts["train"],
                            "heldout": counts["heldout"]})
    dt = time.perf_counter() - t0
    total = counts["train"]["tokens"] + counts["heldout"]["tokens"]
    print(f"tokenize {source}: train {counts['train']['documents']:,} docs / {counts['train']['tokens']:,} tokens, "
          f"heldout {counts['heldout']['documents']:,} docs / {counts['heldout']['tokens']:,} tokens, "
          f"{np.dtype(dtype).name}, {total / max(dt, 1e-9):,.0f} tok/s in {dt:.1f}s -> {paths.tokens_prefix(domain)}.*")

