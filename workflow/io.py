"""Atomic writes and zstd-compressed JSON lines."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from workflow import faults
from workflow.errors import disk_full


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0; a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove `<path>.tmp-<pid>` / `<path>.old-<pid>` left by killed writers (their process is gone)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for sibling in path.parent.glob(f"{glob.escape(path.name)}.*-*"):
        kind, _, pid = sibling.name[len(path.name) + 1:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds.

    A killed process leaves at most a `<path>.tmp-<pid>` directory, never something at `path` (the next
    write removes it: `remove_stale_temporaries`); a full
    disk raises DiskFullError naming `path` (like `atomic_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
    except BaseException as exc:
        err = disk_full(exc, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise err
    faults.point("io.replace")
    if path.exists():
        old = path.with_name(f"{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)
    faults.point("io.replaced")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces `path` (fsync'd) only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        err = disk_full(exc, path)
        tmp.unlink(missing_ok=True)
        raise err
    faults.point("io.replace")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write pretty, key-sorted JSON (stable bytes for DVC)."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_jsonl_zst(path: str | Path, records: Iterable[dict], level: int = 10) -> int:
    """Atomically write records as zstd-compressed JSON lines; returns the number written."""
    n = 0
    with atomic_file(path, "wb") as raw:
        cctx = zstandard.ZstdCompressor(level=level)
        with cctx.stream_writer(raw, closefd=False) as zf:
            for rec in records:
                zf.write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
                n += 1
    return n


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a (possibly .zst-compressed) text file for reading; invalid UTF-8 is surfaced as U+FFFD-free errors."""
    path = Path(path)
    raw = open(path, "rb")
    if path.suffix == ".zst":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.TextIOWrapper(io.BufferedReader(reader), encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield JSON objects from a (possibly .zst) JSON-lines file."""
    with open_text(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
