"""Tokenize one curated source into Megatron indexed datasets (read as is by Megatron-LM/NeMo).

    artifacts/tokens/<domain>.bin/.idx           training documents
    artifacts/tokens/<domain>.heldout.bin/.idx   held-out documents
    artifacts/tokens/<domain>.stats.json         written last: its presence marks completion; counts and the
                                                 four files' checksums (`files`), checked by every reader

One Megatron "document" per curated document (one sequence each), the EOD token appended. Token
dtype: uint16 when every token id fits (vocabulary under 65,500 entries, Megatron's rule), else
int32. Documents are encoded with `add_special_tokens=False` (no BOS/post-processor), without
truncation or padding, and with `encode_special_tokens` on, so a document that *contains* the
text of the EOD token (code and web pages about LLMs do) is tokenized as text: the EOD id only
ever appears at the end of a document, and decoding a document gives back its text exactly.

Pipeline (one split at a time, in shard order):

    parent: zstd shards -> chunks of whole JSON lines (~`chunk_bytes`)   --apply_async-->
    worker processes: json.loads, encode (one core each), ids -> numpy array
    parent: results taken back *in submission order* -> .bin (tokens) and .idx (streamed)

Memory is bounded and does not depend on the corpus size: at most `window` (2 per worker)
chunks are in flight, each `chunk_bytes` plus at most one document; a worker holds one chunk,
its strings and encodings; the parent writes tokens straight to the `.bin` and the index arrays
straight to disk (sequence lengths into the `.idx`, pointers into a side file appended at the
end), never keeping a per-document list. Measured peak RSS (VmHWM), with C = `chunk_bytes` + the
longest document (at most `curation.max_doc_bytes`): parent ~40 MB + 2 * window * C, each worker
~55 MB + ~32 MB of word cache (`bytelevel.MAX_WORDS`) + ~40 * C (strings, id lists). Defaults (1 MiB chunks) on a 61 MB
corpus with 2 workers: parent 47 MB, workers 94 MB each; for 1 MB documents the bound is ~60 MB
+ 2 x 140 MB, about 0.35 GB in all, for any corpus size
(`tests/unit/test_tokenize.py::test_peak_rss_independent_of_corpus_size`).

Encoding: a plain byte-level BPE (the one `tokenizer` trains, and GPT-2-style user tokenizers) goes
through `workflow.bytelevel.WordCache`, ~3x less CPU than `encode_batch_fast` and identical to it
(checked against the tokenizer at start-up, see there); any other tokenizer through `encode_batch_fast`.

Determinism: a document's tokens depend only on its text (no batching effects without padding),
chunks are cut from the input alone, and results are written in input order whatever the
number of workers or the order in which they finish: 1 or N workers give identical bytes.

Workers: `ARBOR_TOKENIZE_WORKERS`, else `OMP_NUM_THREADS` (Snakemake sets it to the rule's
`threads`), else every CPU this process may run on. A runtime setting, not part of the study:
it never changes the output. With 1 worker everything runs in this process.

Atomicity: everything is written under `<name>.tmp-<pid>`, the stats file included (so a full disk
stops the run before anything is replaced); publishing removes the stats file, then per split
removes the old `.idx`, moves the new `.bin` then the new `.idx` into place, then moves the stats
file. At every instant a visible `.bin/.idx` pair is a complete, consistent dataset (old or new),
and until the stats file is back the domain reads as unfinished (Snakemake and DVC rerun it). Temporaries of killed runs (their pid is gone) are removed by the next run.

Only numpy and the standard library are imported at module level (worker processes import this
module; tokenizers and zstandard load where used, the schema only in `run`), and megatron-core
(~8 s to import) is never needed to write its format.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from workflow.params import Params

UINT16_LIMIT = 65_500          # Megatron-LM's rule: uint16 tokens when vocab_size < 65,500
CHUNK_BYTES = 1 << 20          # JSON-lines bytes per task sent to a worker
WORKERS_ENV = "ARBOR_TOKENIZE_WORKERS"

# Megatron's index format (megatron/core/datasets/indexed_dataset.py, `_IndexWriter`), version 1:
# header, <Q version, <B dtype code, <Q sequence count, <Q document count, then int32 sequence
# lengths, int64 byte pointers, int64 document indices (no modes: not multimodal).
_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
                np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
_COUNTS_AT = len(_INDEX_HEADER) + 8 + 1      # offset of the two counts
_LENGTHS_AT = _COUNTS_AT + 16                # offset of the sequence lengths


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 when ids 0..vocab_size-1 fit (Megatron's threshold), int32 otherwise."""
    return np.uint16 if vocab_size < UINT16_LIMIT else np.int32


def shards(source: str, split: str) -> list[str]:
    from workflow import paths

    root = Path(paths.curated_dir(source))
    sub = root if split == "train" else root / "heldout"
    return sorted(glob.glob(str(sub / "part-*.jsonl.zst")))


def default_workers() -> tuple[int, str]:
    """(number of worker processes, where it came from)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for var in (WORKERS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{var}={value!r}: expected a positive integer (the number of tokenize workers)") from None
            if n < 1:
                raise ValueError(f"{var}={value!r}: expected a positive integer (the number of tokenize workers)")
            return n, var
    return cpus, "available CPUs"


# -- the tokenizer, as every worker uses it ------------------------------------------------------

def prepare(tok):
    """Document-encoding settings: whole documents, special-token text encoded as text."""
    tok.no_truncation()
    tok.no_padding()
    tok.encode_special_tokens = True
    return tok


def max_token_id(tok) -> int:
    return max(tok.get_vocab(with_added_tokens=True).values())


_WORKER: dict = {}


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def word_cache_setting(tokenizer_file: str) -> str | None:
    """What workers need to encode through `bytelevel.WordCache` (computed once), or None: use the tokenizer."""
    from tokenizers import Tokenizer

    from workflow import bytelevel

    tok = prepare(Tokenizer.from_file(tokenizer_file))
    return None if bytelevel.unsupported(tok) else bytelevel.disagreeing_chars(tok)


def _init_worker(tokenizer_file: str, eod: int, dtype: str, disagreeing: str | None) -> None:
    from tokenizers import Tokenizer

    from workflow import bytelevel

    # One core per worker: tokenizers' own thread pool would oversubscribe the CPUs we were given.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = prepare(Tokenizer.from_file(tokenizer_file))
    cache = None if disagreeing is None else bytelevel.WordCache(tok, disagreeing)
    _WORKER.update(tok=tok, cache=cache, eod=eod, dtype=np.dtype(dtype))


def _encode(texts: list[str]) -> list[list[int]]:
    cache = _WORKER["cache"]
    if cache is not None:
        return [cache.encode(text) for text in texts]
    return [e.ids for e in _WORKER["tok"].encode_batch_fast(texts, add_special_tokens=False)]


def _texts(chunk: bytes, origin: str) -> list[str]:
    texts = []
    for line in chunk.split(b"\n"):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{origin}: not a curated record (JSON with a 'text' string): {err}; "
                             f"line starts {line[:80]!r}; rerun the curate stage") from None
        if not isinstance(text, str):
            raise ValueError(f"{origin}: 'text' is {type(text).__name__}, not a string; rerun the curate stage")
        texts.append(text)
    return texts


def encode_chunk(chunk: bytes, origin: str = "") -> tuple[np.ndarray, np.ndarray, int]:
    """JSON lines -> (tokens with EOD after each document, int32 lengths, UTF-8 bytes of text)."""
    texts = _texts(chunk, origin)
    ids = _encode(texts)
    eod = _WORKER["eod"]
    for doc in ids:
        doc.append(eod)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    if len(lengths) and lengths.max() > np.iinfo(np.int32).max:
        raise ValueError("a document has more than 2^31 tokens: the Megatron index cannot hold it")
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=_WORKER["dtype"], count=int(lengths.sum()))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return tokens, lengths.astype(np.int32), nbytes


# -- reading ---------------------------------------------------------------------------------------

def read_chunks(files: Iterable[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[bytes, str]]:
    """(whole JSON lines, shard) of the (zstd) shards in order, ~`chunk_bytes` at a time (a line may exceed it)."""
    import zstandard

    for path in files:
        with open(path, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) \
                if path.endswith(".zst") else raw
            rest = b""
            while True:
                data = reader.read(chunk_bytes)
                if not data:
                    break
                buf = rest + data if rest else data
                cut = buf.rfind(b"\n")
                if cut < 0:
                    rest = buf
                    continue
                rest = buf[cut + 1:]
                yield buf[:cut + 1], path
            if rest.strip():
                yield rest, path


# -- encoding in worker processes, results in input order -----------------------------------------

def _start_method() -> str:
    """fork (instant start) when no other Python thread runs, as in `python -m workflow tokenize`; else spawn
    (a thread holding a lock while we fork could deadlock the child). Workers touch no BLAS/OpenMP pool,
    and tokenizers' own pool is off in them (`_init_worker`)."""
    import multiprocessing
    import threading

    return "fork" if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1 else "spawn"


class Encoder:
    """Maps `encode_chunk` over chunks with `workers` processes; yields results in input order."""

    def __init__(self, tokenizer_file: str, eod: int, dtype, workers: int):
        self.workers = workers
        self.args = (tokenizer_file, eod, np.dtype(dtype).name, word_cache_setting(tokenizer_file))
        self.pool = None

    def __enter__(self) -> "Encoder":
        if self.workers > 1:
            import multiprocessing

            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set: tokenizers' fork hook stays quiet
            try:
                self.pool = multiprocessing.get_context(_start_method()).Pool(self.workers, _init_worker, self.args)
            finally:
                _restore_env("TOKENIZERS_PARALLELISM", saved)
        return self

    def __exit__(self, kind, *_) -> None:
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            self.pool = None

    def map(self, chunks: Iterable[tuple[bytes, str]], window: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        if self.pool is None:
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            _init_worker(*self.args)
            try:
                for chunk, origin in chunks:
                    yield encode_chunk(chunk, origin)
            finally:
                _restore_env("TOKENIZERS_PARALLELISM", saved)
            return
        window = window or 2 * self.workers
        pending: deque = deque()
        for chunk, origin in chunks:
            pending.append(self.pool.apply_async(encode_chunk, (chunk, origin)))
            while len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# -- writing Megatron's format, streamed ---------------------------------------------------------

def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


class IndexedWriter:
    """Writes `<prefix>.bin/.idx` (temporary names) exactly as megatron-core's `IndexedDatasetBuilder`
    would for one-sequence documents, without holding the index in memory."""

    def __init__(self, prefix: str, dtype):
        self.dtype = np.dtype(dtype)
        self.bin_path, self.idx_path, self.ptr_path = _tmp(prefix + ".bin"), _tmp(prefix + ".idx"), _tmp(prefix + ".ptr")
        self.bin = open(self.bin_path, "wb")
        self.idx = open(self.idx_path, "wb")
        self.ptr = open(self.ptr_path, "wb")
        self.idx.write(_INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", _DTYPE_CODES[self.dtype]))
        self.idx.write(struct.pack("<QQ", 0, 0))  # counts, filled in by finalize()
        self.sequences = 0
        self.tokens = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if tokens.dtype != self.dtype or lengths.dtype != np.int32:
            raise TypeError(f"expected {self.dtype} tokens and int32 lengths, got {tokens.dtype}/{lengths.dtype}")
        ends = np.cumsum(lengths, dtype=np.int64)
        pointers = np.empty_like(ends)
        pointers[0:1] = 0
        pointers[1:] = ends[:-1]
        pointers += self.tokens
        pointers *= self.dtype.itemsize
        self.bin.write(memoryview(np.ascontiguousarray(tokens)).cast("B"))
        self.idx.write(memoryview(lengths).cast("B"))
        self.ptr.write(memoryview(pointers).cast("B"))
        self.sequences += len(lengths)
        self.tokens += int(ends[-1]) if len(ends) else 0

    def finalize(self) -> None:
        """Completes the `.idx` (pointers, document indices, counts) and fsyncs both files."""
        self.ptr.close()
        with open(self.ptr_path, "rb") as f:
            shutil.copyfileobj(f, self.idx, 1 << 20)
        os.unlink(self.ptr_path)
        block = 1 << 20  # document indices 0..N (one sequence per document), streamed
        for start in range(0, self.sequences + 1, block):
            self.idx.write(np.arange(start, min(start + block, self.sequences + 1), dtype=np.int64).tobytes())
        self.idx.seek(_COUNTS_AT)
        self.idx.write(struct.pack("<QQ", self.sequences, self.sequences + 1))
        for f in (self.bin, self.idx):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        size = os.path.getsize(self.bin_path)
        if size != self.tokens * self.dtype.itemsize:
            raise RuntimeError(f"{self.bin_path}: {size} bytes written, expected {self.tokens * self.dtype.itemsize}")

    def discard(self) -> None:
        for f in (self.bin, self.idx, self.ptr):
            f.close()
        for p in (self.bin_path, self.idx_path, self.ptr_path):
            Path(p).unlink(missing_ok=True)


def write_split(encoder: Encoder, dtype, files: list[str], prefix: str, chunk_bytes: int = CHUNK_BYTES,
                progress: Callable[[int, int], None] = lambda tokens, docs: None) -> dict:
    """Tokenizes `files` into `<prefix>.bin/.idx` under temporary names; returns the split's counts."""
    writer = IndexedWriter(prefix, dtype)
    nbytes = 0
    try:
        for tokens, lengths, n in encoder.map(read_chunks(files, chunk_bytes)):
            writer.add(tokens, lengths)
            nbytes += n
            progress(len(tokens), len(lengths))
        writer.finalize()
    except BaseException:
        writer.discard()
        raise
    return {"documents": writer.sequences, "tokens": writer.tokens, "bytes": nbytes,
            "bytes_per_token": round(nbytes / writer.tokens, 4) if writer.tokens else 0.0}


# -- the stage -------------------------------------------------------------------------------------

def _publish(prefixes: list[str], stats_path: str, stats: dict) -> None:
    from workflow import faults, integrity
    from workflow.io import _fsync_dir, write_json

    staged = integrity.manifest([_tmp(p + ext) for p in prefixes for ext in (".bin", ".idx")], Path(stats_path).parent)
    files = {name.removesuffix(_tmp("")): entry for name, entry in staged.items()}
    write_json(_tmp(stats_path), {**stats, integrity.FILES: files})  # before replacing anything: a full disk stops here
    Path(stats_path).unlink(missing_ok=True)
    for prefix in prefixes:
        faults.point("tokenize.publish")
        Path(prefix + ".idx").unlink(missing_ok=True)          # never an old .idx beside a new .bin
        os.replace(_tmp(prefix + ".bin"), prefix + ".bin")
        os.replace(_tmp(prefix + ".idx"), prefix + ".idx")
    os.replace(_tmp(stats_path), stats_path)                   # the completion marker, last
    _fsync_dir(Path(stats_path).parent)


class _Progress:
    """tqdm bar (tokens, tokens/s) on a terminal; a plain line every `every` seconds in a log file."""

    def __init__(self, desc: str, every: float = 30.0):
        from tqdm import tqdm

        self.bar = tqdm(unit="tok", unit_scale=True, desc=desc, disable=None, mininterval=1.0, file=sys.stderr,
                        dynamic_ncols=True)
        self.desc, self.every = desc, every
        self.docs = self.tokens = 0
        self.t0 = self.last = time.perf_counter()

    def __call__(self, tokens: int, docs: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if not self.bar.disable:
            self.bar.set_postfix_str(f"{self.docs:,} docs", refresh=False)
            self.bar.update(tokens)
            return
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            print(f"{self.desc}: {self.docs:,} docs, {self.tokens:,} tokens, "
                  f"{self.tokens / (now - self.t0):,.0f} tok/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def run(params: "Params", domain: str, *, inputs: dict[str, list[str]], workers: int | None = None) -> None:
    """Tokenizes one domain's curated source `inputs["curated"]` (train + held-out) with the study tokenizer."""
    from tokenizers import Tokenizer

    from workflow import integrity, paths
    from workflow.errors import disk_full
    from workflow.io import read_json, remove_stale_temporaries
    from workflow.params import ParamsError

    curated = Path(inputs["curated"][0])
    source = curated.name
    tok_file = str(Path(inputs["tokenizer"][0]) / "tokenizer.json")
    if not os.path.isfile(tok_file):
        raise FileNotFoundError(f"{tok_file} is missing: run `python -m workflow tokenizer` first")
    if not (curated / "stats.json").is_file():
        raise FileNotFoundError(f"{curated}/stats.json is missing: run `python -m workflow curate --source {source}` first")
    integrity.verify_meta(read_json(curated / "stats.json"), curated, f"curate --source {source}")
    tok = Tokenizer.from_file(tok_file)
    eod = tok.token_to_id(params.tokenizer.eod_token)
    if eod is None:
        raise ParamsError(f"tokenizer.eod_token: '{params.tokenizer.eod_token}' is not in {tok_file}")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(max(vocab, max_token_id(tok) + 1))
    if workers is None:
        workers, origin = default_workers()
    else:
        origin = "argument"
    splits = {"train": shards(source, "train"), "heldout": shards(source, "heldout")}
    prefixes = {split: paths.tokens_prefix(domain, split) for split in splits}
    stats_path = paths.tokens_stats(domain)
    Path(stats_path).parent.mkdir(parents=True, exist_ok=True)
    for prefix in prefixes.values():  # what killed runs left (their pid is gone)
        for suffix in (".bin", ".idx", ".ptr"):
            remove_stale_temporaries(prefix + suffix)
    remove_stale_temporaries(stats_path)

    t0 = time.perf_counter()
    counts: dict[str, dict] = {}
    progress = None
    try:
        with Encoder(tok_file, eod, dtype, workers) as encoder:  # before the bar: its thread would rule out fork
            progress = _Progress(f"tokenize {source}")
            for split, files in splits.items():
                counts[split] = write_split(encoder, dtype, files, prefixes[split], progress=progress)
        progress.close()
        _publish(list(prefixes.values()), stats_path,
                 {"domain": domain, "source": source, "vocab_size": vocab, "dtype": np.dtype(dtype).name, "eod": eod,
                  "train": counts["train"], "heldout": counts["heldout"]})
    except BaseException as exc:
        err = disk_full(exc, f"{paths.tokens_prefix(domain)}.*")
        if progress is not None:
            progress.close()
        for prefix in prefixes.values():
            for ext in (".bin", ".idx", ".ptr"):
                Path(_tmp(prefix + ext)).unlink(missing_ok=True)
        Path(_tmp(stats_path)).unlink(missing_ok=True)
        raise err
    dt = time.perf_counter() - t0
    tr, ho = counts["train"], counts["heldout"]
    total = tr["tokens"] + ho["tokens"]
    print(f"tokenize {source}: train {tr['documents']:,} docs / {tr['tokens']:,} tokens "
          f"({tr['bytes_per_token']:.2f} bytes/token), heldout {ho['documents']:,} docs / {ho['tokens']:,} tokens, "
          f"{np.dtype(dtype).name}, {workers} worker{'s' * (workers > 1)} ({origin}), "
          f"{total / max(dt, 1e-9):,.0f} tok/s in {dt:.1f}s -> {paths.tokens_prefix(domain)}.*")


def kept_chunks(files: list[str], keep: np.ndarray, origin: str) -> Iterator[tuple[bytes, str]]:
    """`read_chunks` with only the lines (documents, in curated order) whose `keep` entry is true."""
    i = 0
    for chunk, path in read_chunks(files):
        lines = [line for line in chunk.split(b"\n") if line.strip()]
        mask = keep[i:i + len(lines)]
        i += len(lines)
        yield b"".join(line + b"\n" for line, k in zip(lines, mask) if k), path
    if i != len(keep):
        raise ValueError(f"{origin}: its keep mask covers {len(keep):,} documents, the curated source has {i:,}; "
                         "rerun the select stage")


def run_selected(params: "Params", selection: str, domain: str, *, inputs: dict[str, list[str]],
                 workers: int | None = None) -> None:
    """Tokenizes the documents data variant `selection` keeps of one domain's curated source (its train split)."""
    from tokenizers import Tokenizer

    from workflow import integrity, paths
    from workflow.io import read_json, remove_stale_temporaries

    curated, selected = Path(inputs["curated"][0]), Path(inputs["selected"][0])
    source = curated.name
    tok_file = str(Path(inputs["tokenizer"][0]) / "tokenizer.json")
    for d, rerun in ((curated, f"curate --source {source}"), (selected, f"select --selection {selection}")):
        if not (d / "stats.json").is_file():
            raise FileNotFoundError(f"{d}/stats.json is missing: run `python -m workflow {rerun}` first")
        integrity.verify_meta(read_json(d / "stats.json"), d, rerun)
    keep = np.load(selected / f"{source}.npy")
    tok = Tokenizer.from_file(tok_file)
    eod = tok.token_to_id(params.tokenizer.eod_token)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(max(vocab, max_token_id(tok) + 1))
    workers = workers or default_workers()[0]
    prefix, stats_path = paths.tokens_prefix(domain, data=selection), paths.tokens_stats(domain, selection)
    Path(stats_path).parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".bin", ".idx", ".ptr"):
        remove_stale_temporaries(prefix + suffix)
    remove_stale_temporaries(stats_path)
    writer = IndexedWriter(prefix, dtype)
    nbytes = 0
    try:
        with Encoder(tok_file, eod, dtype, workers) as encoder:
            for tokens, lengths, n in encoder.map(kept_chunks(shards(source, "train"), keep, str(selected))):
                writer.add(tokens, lengths)
                nbytes += n
        writer.finalize()
        counts = {"documents": writer.sequences, "tokens": writer.tokens, "bytes": nbytes,
                  "bytes_per_token": round(nbytes / writer.tokens, 4) if writer.tokens else 0.0}
        _publish([prefix], stats_path, {"domain": domain, "source": source, "selection": selection, "vocab_size": vocab,
                                        "dtype": np.dtype(dtype).name, "eod": eod, "train": counts})
    except BaseException:
        writer.discard()
        for p in (_tmp(prefix + ".bin"), _tmp(prefix + ".idx"), _tmp(stats_path)):
            Path(p).unlink(missing_ok=True)
        raise
    print(f"tokenize {source} ({selection}): {counts['documents']:,} of {len(keep):,} docs, {counts['tokens']:,} tokens "
          f"-> {prefix}.*")


__all__ = ["run", "run_selected", "token_dtype", "shards", "default_workers", "prepare", "encode_chunk", "read_chunks", "Encoder",
           "IndexedWriter", "write_split"]
