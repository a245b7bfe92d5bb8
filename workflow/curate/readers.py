"""Readers: raw files -> valid `Document`s, every other line counted under a named reason.

Formats by extension: `.jsonl`/`.json` (optionally `.gz`/`.zst`) and `.parquet`. Paths are local
globs or fsspec URLs (`s3://`, `hf://`, `https://`, ...; `workflow.curate.remote` lists and streams
those). Each file read is recorded as an entry `{url, size, <identity>}`: a local file's identity is
its xxh3 content hash, a remote one's its ETag, version id or modification time. A document's id is
its `id_key` field (default `id`, as in datatrove); one without it gets a stable hash of source,
path and line.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sys
from collections import Counter
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import xxhash
import zstandard

from workflow.curate import remote
from workflow.io import atomic_file
from workflow.params import Params, ParamsError

if TYPE_CHECKING:
    from datatrove.data import Document

LOG_SAMPLES = 5  # offending lines logged (and kept in stats.json) per invalid reason


def match_pattern(pattern: str) -> list[str]:
    """Files matching one `sources.<s>.paths` entry (a local glob, or an fsspec URL listed remotely), sorted."""
    if remote.is_url(pattern):
        return remote.expand(pattern)
    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


_FROZEN: dict | None = None  # listings of this process, once `freeze_listings()` was called


def freeze_listings() -> None:
    """List each source once for the rest of this process: an engine building its DAG asks for a source's files
    once per job, and a remote listing (or a glob over 25,000 files) each time would dominate planning."""
    global _FROZEN
    if _FROZEN is None:
        _FROZEN = {}


@contextmanager
def frozen_listings() -> Iterator[None]:
    """`freeze_listings()` for one command: listings made inside are forgotten on exit (a test process runs
    many commands over files it changes in between)."""
    global _FROZEN
    before = _FROZEN
    freeze_listings()
    try:
        yield
    finally:
        _FROZEN = before


def listed(key: tuple, compute: Callable[[], Any]) -> Any:
    """`compute()`, remembered under `key` (with the working directory) once listings are frozen."""
    if _FROZEN is None:
        return compute()
    key = (*key, os.getcwd())
    if key not in _FROZEN:
        _FROZEN[key] = compute()
    return _FROZEN[key]


def source_files(params: Params, source: str) -> list[str]:
    """A source's input files, sorted (the order `curate_shard` groups them in)."""
    patterns = tuple(params.sources[source].paths)
    return listed(("files", patterns), lambda: sorted({f for pattern in patterns for f in match_pattern(pattern)}))


def expand_paths(params: Params, source: str) -> list[str]:
    """`source_files`, with a ParamsError when a pattern matches no file."""
    if source not in params.sources:
        raise ParamsError(f"sources.{source}: unknown source; declared sources are {sorted(params.sources)}")
    found: set[str] = set()
    for i, pattern in enumerate(params.sources[source].paths):
        matched = match_pattern(pattern)
        if not matched:
            where = "on the server" if remote.is_url(pattern) else f"relative to {os.getcwd()}"
            raise ParamsError(f"sources.{source}.paths.{i}: pattern '{pattern}' matches no file "
                              f"({where}); fix the glob or create the data")
        found.update(matched)
    return sorted(found)


def display_path(path: str) -> str:
    if remote.is_url(path):
        return path
    rel = os.path.relpath(path)
    return Path(rel if not rel.startswith("..") else os.path.abspath(path)).as_posix()


def file_size(path: str) -> int:
    """Bytes of an input file (a remote one: one metadata request)."""
    return remote.describe(path)["size"] if remote.is_url(path) else os.path.getsize(path)


def input_entry(path: str) -> dict:
    """What identifies an input file's bytes: `remote.describe` (one HEAD), or `{url, size, xxh3}` with the
    content hashed (a local file, or a remote one whose server reports no ETag, version or date)."""
    if remote.is_url(path):
        entry = remote.describe(path)
        if len(entry) > 2:
            return entry
    else:
        entry = {"url": display_path(path), "size": os.path.getsize(path)}
    h = xxhash.xxh3_128()
    with open_input(path, entry) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return {**entry, "xxh3": h.hexdigest()}


def remote_manifest(params: Params, source: str) -> list[dict]:
    """`remote.describe` of each remote input file of `source`, in shard order (local files: none, the
    engines track those themselves). One listing per pattern and one HEAD per file, no body read."""
    return [remote.describe(f) for f in expand_paths(params, source) if remote.is_url(f)]


def write_manifest(entries: list[dict], path: str | Path) -> bool:
    """Write `entries` as JSON at `path` only when they differ from what it holds, so its mtime and
    content move only when a remote object changed; True when it wrote."""
    text = json.dumps(entries, indent=1, sort_keys=True) + "\n"
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    with atomic_file(path) as f:
        f.write(text)
    return True


class InvalidLog:
    """Counts invalid inputs per reason; the first few of each go to stderr and to `examples`."""

    def __init__(self, source: str):
        self.source = source
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def __call__(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= LOG_SAMPLES:
            self.examples.setdefault(reason, []).append(where)
            print(f"curate {self.source}: invalid ({reason}) at {where}{': ' + detail if detail else ''}", file=sys.stderr)


class TruncatedInput(Exception):
    """A compressed input ends in the middle of a frame."""


def _zst_chunks(raw: IO[bytes], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-frame) zstd file; raises TruncatedInput on a cut frame
    (zstandard's stream_reader returns a silent EOF there)."""
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


def open_input(path: str, entry: dict | None = None) -> IO[bytes]:
    """A binary file of `path`; a remote one streams in ranges, pinned to `entry` (`input_entry`) when given."""
    if remote.is_url(path):
        return remote.open_url(entry or remote.describe(path))
    return open(path, "rb")


def _json_lines(path: str, entry: dict | None = None) -> tuple[Iterator[bytes], IO[bytes]]:
    raw = open_input(path, entry)
    if path.endswith(".zst"):
        return _lines(_zst_chunks(raw)), raw
    if path.endswith(".gz"):
        return iter(gzip.GzipFile(fileobj=raw, mode="rb")), raw
    return iter(raw), raw


def _parquet_records(path: str, entry: dict, text_key: str, id_key: str | None) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with open_input(path, entry) as raw:
        pf = pq.ParquetFile(raw)
        names = set(pf.schema_arrow.names)
        columns = [c for c in (text_key, id_key, "meta") if c and c in names]
        for batch in pf.iter_batches(batch_size=1024, columns=columns or None):
            yield from batch.to_pylist()


class Reader:
    """Yields the valid documents of one file; counts everything else under `invalid`.

    Invalid reasons: blank_line, invalid_utf8, bad_json, not_object, missing_text, null_text,
    non_string_text, empty_text, too_large, unreadable_file (a truncated or corrupt file: what
    was read is kept, the rest counts once). A remote file that cannot be fetched (after retries)
    is no invalid input: RemoteError stops the stage, so no shard is written from part of it.
    """

    def __init__(self, source: str, text_key: str, id_key: str | None, max_doc_bytes: int, invalid: InvalidLog):
        self.source, self.text_key, self.id_key, self.max_doc_bytes = source, text_key, id_key, max_doc_bytes
        self.invalid = invalid
        self.docs_in = 0
        self.bytes_in = 0

    def read(self, path: str, entry: dict, progress: Callable[[int], None] = lambda n: None) -> Iterator[Document]:
        """Documents of `path`, whose `input_entry` is `entry` (a remote file must still match it at the end:
        RemoteError otherwise, like any remote failure that retries did not cure)."""
        shown = display_path(path)
        lineno = 0
        try:
            if path.endswith(".parquet"):
                for lineno, record in enumerate(_parquet_records(path, entry, self.text_key, self.id_key), start=1):
                    self.docs_in += 1
                    doc = self._document(record, shown, lineno)
                    if doc is not None:
                        self.bytes_in += len(doc.text.encode("utf-8"))
                        yield doc
            else:
                lines, raw = _json_lines(path, entry)
                done = 0
                with raw:
                    for lineno, line in enumerate(lines, start=1):
                        self.docs_in += 1
                        self.bytes_in += len(line)
                        if lineno % 256 == 0 and hasattr(raw, "tell"):
                            pos = raw.tell()
                            progress(pos - done)
                            done = pos
                        doc = self._parse(line, shown, lineno)
                        if doc is not None:
                            yield doc
        except (TruncatedInput, zstandard.ZstdError, EOFError, OSError, ValueError) as err:
            self.docs_in += 1
            self.invalid("unreadable_file", f"{shown}:{lineno + 1}", f"{type(err).__name__}: {err}")
        if remote.is_url(path):
            remote.check_unchanged(entry)
        progress(0)

    def _parse(self, line: bytes, shown: str, lineno: int) -> Document | None:
        where = f"{shown}:{lineno}"
        if not line.strip():
            self.invalid("blank_line", where)
            return None
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as err:
            self.invalid("invalid_utf8", where, str(err))
            return None
        try:
            record = json.loads(decoded)
        except ValueError as err:
            self.invalid("bad_json", where, str(err))
            return None
        if not isinstance(record, dict):
            self.invalid("not_object", where, f"got {type(record).__name__}")
            return None
        return self._document(record, shown, lineno)

    def _document(self, record: dict, shown: str, lineno: int) -> Document | None:
        where, key = f"{shown}:{lineno}", self.text_key
        if key not in record:
            self.invalid("missing_text", where, f"no key '{key}'")
            return None
        text = record[key]
        if text is None:
            self.invalid("null_text", where)
            return None
        if not isinstance(text, str):
            self.invalid("non_string_text", where, f"'{key}' is {type(text).__name__}")
            return None
        if not text.strip():
            self.invalid("empty_text", where)
            return None
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as err:  # lone surrogates from "\ud800"-style escapes
            self.invalid("invalid_utf8", where, str(err))
            return None
        if size > self.max_doc_bytes:
            self.invalid("too_large", where, f"{size} bytes > curation.max_doc_bytes={self.max_doc_bytes}")
            return None
        doc_id = record.get(self.id_key) if self.id_key else None
        if doc_id is None or doc_id == "" or isinstance(doc_id, (dict, list)):
            doc_id = hashlib.sha1(f"{self.source}\0{shown}\0{lineno}".encode()).hexdigest()[:20]
        meta = record.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["origin"] = where
        from datatrove.data import Document

        return Document(text=text, id=str(doc_id), metadata={"meta": meta})
