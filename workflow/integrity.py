"""Checksums of artifacts: each stage records what it wrote, the next one checks before reading.

A stage lists its files' sizes and SHA-256 under `"files"` in the metadata it writes last (curate
`stats.json`, `<domain>.stats.json`, a model dir's `meta.json`); a reader calls `verify_meta` before
opening them, so a truncated, corrupted or swapped file fails with one line naming it (and the stage
to rerun) instead of being read as garbage.

    manifest(dir or files, root)   -> {relative name: {"sha256": hex, "bytes": n}}
    verify(manifest, root, rerun)   raises IntegrityError: missing / truncated (n of m bytes) / checksum mismatch

Files are hashed in 1 MiB blocks, at most once per process for a given (path, size, mtime_ns).

Metadata written before manifests existed (no `"files"`) is used with a one-line warning, not refused:
neither engine reruns a stage when only code changes, so refusing would force a manual rebuild of
every finished artifact (trunk checkpoints: GPU-days) to gain a check those bytes never had. Refusing
to unpickle code does not depend on the manifest (`workflow.train.checkpoint`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from workflow.errors import StageError

FILES = "files"
BLOCK = 1 << 20


class IntegrityError(StageError):
    """An artifact's file is missing, truncated or its bytes differ from those its producer recorded."""


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (cached per process by path, size and mtime)."""
    stat = os.stat(path)
    return _sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, _size: int, _mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def manifest(target: str | Path | Iterable[str | Path], root: str | Path | None = None,
             exclude: Iterable[str] = ()) -> dict[str, dict]:
    """`{name: {"sha256", "bytes"}}` of every file under directory `target` (names relative to it, minus
    `exclude`), or of the files `target` (names relative to `root`)."""
    if isinstance(target, (str, Path)):
        root = Path(target)
        files = [p for p in root.rglob("*") if p.is_file()]
    else:
        files = [Path(p) for p in target]
    skip = set(exclude)
    out = {}
    for path in files:
        name = path.relative_to(root).as_posix()
        if name not in skip:
            out[name] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
    return dict(sorted(out.items()))


def problem(files: dict[str, dict], root: str | Path) -> str | None:
    """What is wrong with the first file of `files` (a manifest) under `root` that does not match, or None."""
    for name, entry in sorted(files.items()):
        path = Path(root) / name
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return f"{path}: missing"
        if size < entry["bytes"]:
            return f"{path}: truncated ({size:,} of {entry['bytes']:,} bytes)"
        if size > entry["bytes"]:
            return f"{path}: {size:,} bytes, {entry['bytes']:,} recorded"
        got = sha256(path)
        if got != entry["sha256"]:
            return (f"{path}: checksum mismatch (sha256 {got[:12]}..., recorded {entry['sha256'][:12]}...): "
                    "its bytes changed since it was written")
    return None


def verify(files: dict[str, dict], root: str | Path, rerun: str) -> None:
    """Raise IntegrityError (naming the file and `python -m workflow <rerun>`) unless `files` match."""
    found = problem(files, root)
    if found:
        raise IntegrityError(f"{found}; rerun `python -m workflow {rerun}`")


_warned: set[str] = set()


def recorded(meta: dict, root: str | Path, rerun: str, names: Iterable[str] | None = None) -> dict[str, dict] | None:
    """The manifest in metadata `meta` (restricted to `names`), or None, after a one-time warning, when `meta`
    predates manifests."""
    files = meta.get(FILES)
    if files is None:
        what = str(root) if names is None else ", ".join(str(Path(root) / n) for n in names)
        if what not in _warned:
            _warned.add(what)
            print(f"warning: {what}: written without checksums (before they were recorded), used unverified; "
                  f"`python -m workflow {rerun}` adds them", file=sys.stderr)
        return None
    if names is None:
        return files
    missing = [n for n in names if n not in files]
    if missing:
        raise IntegrityError(f"{Path(root) / missing[0]}: not in its producer's checksum list; "
                             f"rerun `python -m workflow {rerun}`")
    return {n: files[n] for n in names}


def verify_meta(meta: dict, root: str | Path, rerun: str, names: Iterable[str] | None = None) -> None:
    """`verify` the manifest recorded in `meta` (the files below `root`, or only `names`); see `recorded`."""
    files = recorded(meta, root, rerun, names)
    if files is not None:
        verify(files, root, rerun)
