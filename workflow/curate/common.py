"""Shared by the curate stages: zstd JSON-lines writers, intermediate fingerprints, stats files.

Every curate output dir ends with `stats.json`, written last, listing its other files' checksums
(`workflow.integrity`); `require_stats` checks them before a later step reads the dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

import zstandard

from workflow import faults, integrity
from workflow.io import write_json

SHARD_NAME = "part-{:05d}.jsonl.zst"
ZSTD_LEVEL = 10
STATS = "stats.json"
# Labels written by curate_split, one per document of a shard (labels-NNNNN.npy).
TRAIN, HELDOUT, EXACT_DUP, NEAR_DUP = 0, 1, 2, 3


class JsonlZst:
    """Streams records into one zstd JSON-lines file (fsync'd on close)."""

    def __init__(self, path: Path):
        self._raw: IO[bytes] = open(path, "wb")
        self._zf = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self._raw, closefd=False)

    def write(self, record: dict) -> None:
        self._zf.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")

    def close(self) -> None:
        self._zf.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()


class ShardWriter:
    """Streams records into `<dir>/part-NNNNN.jsonl.zst`, `shard_docs` each; at least one shard."""

    def __init__(self, directory: Path, shard_docs: int):
        self.dir, self.shard_docs = Path(directory), shard_docs
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard, self.in_shard, self.docs, self.bytes = 0, 0, 0, 0
        self._out = JsonlZst(self.dir / SHARD_NAME.format(0))

    def write(self, record: dict) -> None:
        if self.in_shard >= self.shard_docs:
            self._out.close()
            faults.point("curate.shard")
            self.shard, self.in_shard = self.shard + 1, 0
            self._out = JsonlZst(self.dir / SHARD_NAME.format(self.shard))
        self._out.write(record)
        self.in_shard += 1
        self.docs += 1
        self.bytes += len(record["text"].encode("utf-8"))

    def close(self) -> None:
        self._out.close()
        faults.point("curate.shard")


def shard_command(directory: str | Path) -> str:
    """The command that writes a curate_shard directory (`artifacts/.curate/<source>/shard-<part>`)."""
    d = Path(directory)
    return f"curate_shard --source {d.parent.name} --part {d.name.removeprefix('shard-')}"


def read_stats(directory: str | Path) -> dict | None:
    path = Path(directory) / STATS
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def write_stats(directory: str | Path, stats: dict) -> None:
    """`stats.json` with the checksums of every other file in `directory` (write it last)."""
    write_json(Path(directory) / STATS, {**stats, integrity.FILES: integrity.manifest(directory, exclude=[STATS])})


def require_stats(directory: str | Path, command: str) -> dict:
    """A finished curate dir's stats, after checking its files against them (`command` makes it again)."""
    stats = read_stats(directory)
    if stats is None:
        raise FileNotFoundError(f"{directory}/{STATS} is missing: run `python -m workflow {command}` first")
    integrity.verify_meta(stats, directory, command)
    return stats
