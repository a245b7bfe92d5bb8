"""Curate one source: raw jsonl(.zst|.gz) -> clean, deduplicated, split documents.

    artifacts/curated/<source>/
        part-00000.jsonl.zst ...          training documents, `curation.shard_docs` per shard
        heldout/part-00000.jsonl.zst ...  held-out documents (evaluation only)
        stats.json                        counts per outcome; no timings, so reruns are byte-identical

Every output record is `{"id", "domain", "text", "meta"}` (`meta` keeps the input's `meta`
object when it has one, plus `origin` = "<file>:<line>").

The run is a chain of small blocks in the style of datatrove: a *formatter* rewrites
`doc.text`; a *filter* returns `True` (keep) or `(False, reason)`. Rejections of a block whose
`kind` is "duplicates" are counted under `stats.duplicates`, every other rejection under
`stats.dropped`. Adding a quality filter, MinHash or decontamination means adding a block to
`build_pipeline()`; the reader, accounting, split and writers do not change.

Malformed input never stops the run: each bad line is counted under `stats.invalid[reason]`
and a sample of them (file:line) is logged to stderr.

Accounting invariant (checked before writing):
    docs_in = sum(invalid) + docs_out + heldout_docs + sum(dropped) + sum(duplicates)
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Union

import zstandard

from workflow import paths
from workflow.io import atomic_dir, write_json
from workflow.params import Curation, Params, ParamsError

FilterResult = Union[bool, tuple[bool, str]]
SHARD_NAME = "part-{:05d}.jsonl.zst"
ZSTD_LEVEL = 10
LOG_SAMPLES = 5  # offending lines logged per invalid reason


# ------------------------------------------------------------------------------------------
# Documents and blocks
# ------------------------------------------------------------------------------------------

@dataclass
class Document:
    """Same shape as `datatrove.data.Document`, so datatrove blocks can be dropped in later."""

    text: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Block:
    """A pipeline step. Subclasses set `name` and implement `__call__`."""

    name = "block"
    kind = "dropped"  # which stats bucket a rejection counts under: "dropped" | "duplicates"

    def __call__(self, doc: Document) -> FilterResult:  # pragma: no cover - interface
        raise NotImplementedError


class NormalizeText(Block):
    """Formatter: unicode normal form (NFC/NFKC/None) and \\r\\n, \\r -> \\n. Never rejects."""

    name = "normalize"

    def __init__(self, form: str | None):
        self.form = form

    def __call__(self, doc: Document) -> FilterResult:
        text = doc.text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.form:
            text = unicodedata.normalize(self.form, text)
        doc.text = text
        return True


class MinChars(Block):
    name = "min_chars"

    def __init__(self, min_chars: int):
        self.min_chars = min_chars

    def __call__(self, doc: Document) -> FilterResult:
        return True if len(doc.text) >= self.min_chars else (False, "min_chars")


class ExactDedup(Block):
    """Drops a document whose normalised text was already kept (16-byte digest per document)."""

    name = "exact_dedup"
    kind = "duplicates"

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def __call__(self, doc: Document) -> FilterResult:
        digest = doc.metadata["_digest"]
        if digest in self.seen:
            return False, "exact"
        self.seen.add(digest)
        return True


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def is_heldout(digest: bytes, fraction: float) -> bool:
    """Deterministic split by content: exact duplicates always land on the same side."""
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


class ContentDigest(Block):
    """Stores the digest of the normalised text for dedup and the held-out split."""

    name = "digest"

    def __call__(self, doc: Document) -> FilterResult:
        doc.metadata["_digest"] = text_digest(doc.text)
        return True


def build_pipeline(cfg: Curation) -> list[Block]:
    blocks: list[Block] = [NormalizeText(cfg.normalize), MinChars(cfg.min_chars), ContentDigest()]
    if cfg.exact_dedup:
        blocks.append(ExactDedup())
    return blocks


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------

def expand_paths(params: Params, source: str) -> list[str]:
    """Sorted, de-duplicated matches of `sources.<source>.paths`; ParamsError when nothing matches."""
    if source not in params.sources:
        raise ParamsError(f"sources.{source}: unknown source; declared sources are {sorted(params.sources)}")
    files: set[str] = set()
    for i, pattern in enumerate(params.sources[source].paths):
        matches = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matches:
            raise ParamsError(f"sources.{source}.paths.{i}: pattern '{pattern}' matches no file "
                              f"(relative to {os.getcwd()}); fix the glob or create the data")
        files.update(matches)
    return sorted(files)


class TruncatedInput(Exception):
    """A compressed input ends in the middle of a frame."""


def _zst_chunks(raw: IO[bytes], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-frame) zstd file; raises TruncatedInput on a cut frame.

    `zstandard`'s stream_reader returns a silent EOF on a truncated file; a decompressobj per
    frame exposes `eof`, so a killed download is counted instead of silently shortened.
    """
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    in_frame = False
    while chunk := raw.read(chunk_size):
        while chunk:
            in_frame = True
            out = dobj.decompress(chunk)
            if out:
                yield out
            if not dobj.eof:
                break
            chunk, in_frame = dobj.unused_data, False
            dobj = dctx.decompressobj()
    if in_frame:
        raise TruncatedInput("zstd stream ends inside a frame (truncated file?)")


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending: list[bytes] = []  # pieces of a line spanning chunks (no quadratic re-joining)
    for chunk in chunks:
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        parts = chunk.split(b"\n")
        pending.append(parts[0])
        yield b"".join(pending) + b"\n"
        for part in parts[1:-1]:
            yield part + b"\n"
        pending = [parts[-1]] if parts[-1] else []
    if pending and any(pending):
        yield b"".join(pending)


def _open_lines(path: str) -> tuple[Iterator[bytes], IO[bytes]]:
    """Returns (iterator of raw lines, the underlying file for progress via tell())."""
    raw = open(path, "rb")
    if path.endswith(".zst"):
        return _lines(_zst_chunks(raw)), raw
    if path.endswith(".gz"):
        return iter(gzip.GzipFile(fileobj=raw, mode="rb")), raw
    return iter(raw), raw


def _display_path(path: str) -> str:
    rel = os.path.relpath(path)
    return Path(rel if not rel.startswith("..") else os.path.abspath(path)).as_posix()


@dataclass
class Stats:
    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    heldout_docs: int = 0
    heldout_bytes: int = 0
    invalid: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)

    def to_json(self, source: str, domain: str) -> dict:
        return {
            "source": source,
            "domain": domain,
            "files": self.files,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "heldout_docs": self.heldout_docs,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "heldout_bytes": self.heldout_bytes,
            "invalid": dict(sorted(self.invalid.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "duplicates": {"exact": self.duplicates.get("exact", 0), "near": self.duplicates.get("near", 0),
                           **{k: v for k, v in sorted(self.duplicates.items()) if k not in ("exact", "near")}},
            "decontaminated": 0,
        }


class InvalidLog:
    """Counts invalid lines and logs the first few of each reason to stderr."""

    def __init__(self, stats: Stats, source: str):
        self.stats, self.source = stats, source

    def __call__(self, reason: str, where: str, detail: str = "") -> None:
        self.stats.invalid[reason] += 1
        if self.stats.invalid[reason] <= LOG_SAMPLES:
            print(f"curate {self.source}: invalid ({reason}) at {where}{': ' + detail if detail else ''}",
                  file=sys.stderr)


def read_documents(files: list[str], source: str, text_key: str, id_key: str | None, max_doc_bytes: int,
                   stats: Stats, invalid: InvalidLog, progress: Callable[[int], None]) -> Iterator[Document]:
    """Yields the valid documents of `files` in order; counts everything else as invalid."""
    for path in files:
        shown = _display_path(path)
        stats.files.append(shown)
        lines, raw = _open_lines(path)
        done = 0
        lineno = 0
        try:
            with raw:
                for lineno, line in enumerate(lines, start=1):
                    stats.docs_in += 1
                    stats.bytes_in += len(line)
                    if lineno % 256 == 0:
                        pos = raw.tell()
                        progress(pos - done)
                        done = pos
                    doc = _parse_line(line, shown, lineno, source, text_key, id_key, max_doc_bytes, invalid)
                    if doc is not None:
                        yield doc
        except (TruncatedInput, zstandard.ZstdError, EOFError, OSError) as err:
            # A truncated or corrupt compressed file: keep what was read; its unreadable rest
            # counts as one invalid input.
            stats.docs_in += 1
            invalid("unreadable_file", f"{shown}:{lineno + 1}", f"{type(err).__name__}: {err}")
        progress(os.path.getsize(path) - done)


def _parse_line(line: bytes, shown: str, lineno: int, source: str, text_key: str, id_key: str | None,
                max_doc_bytes: int, invalid: InvalidLog) -> Document | None:
    where = f"{shown}:{lineno}"
    if not line.strip():
        invalid("blank_line", where)
        return None
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        invalid("invalid_utf8", where, str(err))
        return None
    try:
        record = json.loads(decoded)
    except ValueError as err:
        invalid("bad_json", where, str(err))
        return None
    if not isinstance(record, dict):
        invalid("not_object", where, f"got {type(record).__name__}")
        return None
    if text_key not in record:
        invalid("missing_text", where, f"no key '{text_key}'")
        return None
    text = record[text_key]
    if text is None:
        invalid("null_text", where)
        return None
    if not isinstance(text, str):
        invalid("non_string_text", where, f"'{text_key}' is {type(text).__name__}")
        return None
    if not text.strip():
        invalid("empty_text", where)
        return None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as err:  # lone surrogates from "\ud800"-style escapes
        invalid("invalid_utf8", where, str(err))
        return None
    if size > max_doc_bytes:
        invalid("too_large", where, f"{size} bytes > curation.max_doc_bytes={max_doc_bytes}")
        return None
    doc_id = record.get(id_key) if id_key else None
    if doc_id is None or isinstance(doc_id, (dict, list)):
        doc_id = hashlib.sha1(f"{source}\0{shown}\0{lineno}".encode()).hexdigest()[:20]
    meta = record.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["origin"] = where
    return Document(text=text, id=str(doc_id), metadata={"meta": meta})


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------

class ShardWriter:
    """Streams records into `<dir>/part-NNNNN.jsonl.zst`, `shard_docs` each; at least one shard."""

    def __init__(self, directory: Path, shard_docs: int):
        self.dir, self.shard_docs = directory, shard_docs
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard = -1
        self.in_shard = 0
        self._raw: IO[bytes] | None = None
        self._zf: Any = None
        self._open_next()

    def _open_next(self) -> None:
        self._close_current()
        self.shard += 1
        self.in_shard = 0
        self._raw = open(self.dir / SHARD_NAME.format(self.shard), "wb")
        self._zf = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self._raw, closefd=False)

    def _close_current(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            self._zf = self._raw = None

    def write(self, record: dict) -> None:
        if self.in_shard >= self.shard_docs:
            self._open_next()
        self._zf.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self.in_shard += 1

    def close(self) -> None:
        self._close_current()


# ------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------

def _progress_bar(total: int, source: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"curate {source}",
                disable=None, mininterval=1.0, file=sys.stderr)


def run(params: Params, source: str) -> None:
    """Curate `sources[source]` into `paths.curated_dir(source)` (atomic, deterministic)."""
    files = expand_paths(params, source)  # fails before any work
    src, cfg = params.sources[source], params.curation
    stats = Stats()
    invalid = InvalidLog(stats, source)
    pipeline = build_pipeline(cfg)
    t0 = time.perf_counter()
    bar = _progress_bar(sum(os.path.getsize(f) for f in files), source)
    try:
        with atomic_dir(paths.curated_dir(source)) as tmp:
            train, heldout = ShardWriter(tmp, cfg.shard_docs), ShardWriter(tmp / "heldout", cfg.shard_docs)
            try:
                for doc in read_documents(files, source, src.text_key, src.id_key, cfg.max_doc_bytes,
                                          stats, invalid, bar.update):
                    if not _apply(pipeline, doc, stats):
                        continue
                    record = {"id": doc.id, "domain": src.domain, "text": doc.text, "meta": doc.metadata["meta"]}
                    size = len(doc.text.encode("utf-8"))
                    if is_heldout(doc.metadata["_digest"], cfg.heldout_fraction):
                        heldout.write(record)
                        stats.heldout_docs += 1
                        stats.heldout_bytes += size
                    else:
                        train.write(record)
                        stats.docs_out += 1
                        stats.bytes_out += size
            finally:
                train.close()
                heldout.close()
            accounted = (sum(stats.invalid.values()) + stats.docs_out + stats.heldout_docs
                         + sum(stats.dropped.values()) + sum(stats.duplicates.values()))
            assert accounted == stats.docs_in, f"curate accounting: {accounted} != docs_in {stats.docs_in}"
            write_json(tmp / "stats.json", stats.to_json(source, src.domain))
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    if stats.docs_out == 0:
        print(f"curate {source}: WARNING no training documents survived; see {paths.curated_dir(source)}/stats.json",
              file=sys.stderr)
    print(f"curate {source}: {stats.docs_in:,} in -> {stats.docs_out:,} train + {stats.heldout_docs:,} heldout; "
          f"invalid {sum(stats.invalid.values()):,}, dropped {sum(stats.dropped.values()):,}, "
          f"duplicates {sum(stats.duplicates.values()):,}; {stats.bytes_in / 1e6:.1f} MB in, "
          f"{(stats.bytes_out + stats.heldout_bytes) / 1e6:.1f} MB out; {dt:.1f}s "
          f"({stats.docs_in / max(dt, 1e-9):,.0f} docs/s) -> {paths.curated_dir(source)}")


def _apply(pipeline: list[Block], doc: Document, stats: Stats) -> bool:
    for block in pipeline:
        result = block(doc)
        keep, reason = (result, block.name) if isinstance(result, bool) else result
        if not keep:
            (stats.duplicates if block.kind == "duplicates" else stats.dropped)[reason] += 1
            return False
    return True
