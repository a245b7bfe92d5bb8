"""curate_shard: one group of input files -> documents that pass the per-document pipeline.

    artifacts/.curate/<source>/shard-<part>/
        docs.jsonl.zst   surviving documents {id, text, meta}, in input order
        digests.npy      (N, 16) uint8 content digests (exact dedup, held-out split)
        minhash.npy      (N, buckets*hashes) uint32 MinHash signatures (when near_dedup is on)
        stats.json       inputs (what was read: [{url, size, etag | version_id | xxh3 ...}]), docs_in, bytes_in,
                         invalid, dropped (+ reasons), files (checksums)

`part` indexes the groups of a source's sorted input files (`curation.files_per_job` or `bytes_per_job`;
workflow/stages.py). Memory is bounded by the shard's surviving-document count (16 + 448 bytes each), never
by the corpus.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from workflow import paths
from workflow.curate.common import JsonlZst, write_stats
from workflow.curate.dedup import MinHasher, text_digest
from workflow.curate.readers import InvalidLog, Reader, display_path, input_entry
from workflow.io import atomic_dir
from workflow.params import Params, ParamsError


def curate_files(params: Params, source: str, files: list[str], out: Path, progress: bool = True) -> dict:
    """Filter a group of raw files, in order, into `out` (an existing empty directory); returns the shard's stats."""
    from tqdm import tqdm

    from workflow.curate.blocks import Pipeline, build_steps

    src, cfg = params.sources[source], params.curation
    pipeline = Pipeline(build_steps(cfg, src.curation_steps(cfg)))
    hasher = MinHasher(cfg.near_dedup) if cfg.near_dedup else None
    invalid = InvalidLog(source)
    reader = Reader(source, src.text_key, src.id_key, cfg.max_doc_bytes, invalid)
    dropped: Counter = Counter()
    reasons: Counter = Counter()
    digests: list[bytes] = []
    signatures: list[np.ndarray] = []
    entries = [input_entry(path) for path in files]  # what is read: url, size, etag (or a local file's hash)
    bar = tqdm(total=sum(e["size"] for e in entries), unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
               desc=f"curate {source} {display_path(files[0])}" + (f" +{len(files) - 1}" if len(files) > 1 else ""),
               disable=None if progress else True, mininterval=1.0)
    writer = JsonlZst(out / "docs.jsonl.zst")
    try:
        for path, entry in zip(files, entries):
            for doc in reader.read(path, entry, bar.update):
                verdict = pipeline(doc)
                if verdict is not None:
                    dropped[verdict[0]] += 1
                    reasons[f"{verdict[0]}/{verdict[1]}"] += 1
                    continue
                meta = doc.metadata["meta"]
                if "language" in doc.metadata:
                    meta["language"] = doc.metadata["language"]
                    meta["language_score"] = round(doc.metadata["language_score"], 4)
                digests.append(text_digest(doc.text))
                if hasher:
                    signatures.append(hasher.signature(doc.text))
                writer.write({"id": doc.id, "text": doc.text, "meta": meta})
    finally:
        writer.close()
        bar.close()
    np.save(out / "digests.npy", np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 16))
    if hasher:
        width = cfg.near_dedup.buckets * cfg.near_dedup.hashes_per_bucket
        np.save(out / "minhash.npy", np.stack(signatures) if signatures else np.zeros((0, width), dtype=np.uint32))
    return {
        "inputs": entries,
        "docs_in": reader.docs_in,
        "bytes_in": reader.bytes_in,
        "docs": len(digests),
        "invalid": dict(sorted(invalid.counts.items())),
        "invalid_examples": dict(sorted(invalid.examples.items())),
        "dropped": dict(sorted(dropped.items())),
        "dropped_reasons": dict(sorted(reasons.items())),
    }


def run(params: Params, source: str, part: str, *, inputs: dict[str, list[str]]) -> None:
    """Write `paths.curate_shard_dir(source, part)` from its group of raw files `inputs["raw"]` (atomic, deterministic)."""
    files = inputs["raw"]
    for path in files:
        if "://" not in path and not Path(path).is_file():
            raise ParamsError(f"sources.{source}.paths: '{path}' matches no file (relative to {Path.cwd()}); "
                              "fix the glob or create the data")
    with atomic_dir(paths.curate_shard_dir(source, part)) as tmp:
        stats = curate_files(params, source, files, tmp)
        write_stats(tmp, stats)
    shown = display_path(files[0]) + (f" and {len(files) - 1} more" if len(files) > 1 else "")
    print(f"curate_shard {source} {shown}: {stats['docs_in']:,} in -> {stats['docs']:,} kept; "
          f"invalid {sum(stats['invalid'].values()):,}, dropped {stats['dropped']}")
