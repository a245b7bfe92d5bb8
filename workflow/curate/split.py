"""curate_split: one source's shards -> exact + near dedup labels and its held-out split.

    artifacts/.curate/<source>/split/
        labels-<part>.npy   uint8 per shard document: 0 train, 1 held-out, 2 exact dup, 3 near dup
        heldout/part-*.jsonl.zst   the held-out documents {id, domain, text, meta}
        stats.json          duplicates, held-out counts, files (checksums)

Runs after every shard of the source (and of earlier sources when
`curation.exact_dedup_across_sources`: the stage table's inputs). The held-out split is drawn from the deduplicated
documents by content hash, so evaluation never sees a copy of a training document; every
source's `curate` then decontaminates its training data against all held-out splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow import paths
from workflow.curate.common import EXACT_DUP, HELDOUT, NEAR_DUP, TRAIN, ShardWriter, require_stats, shard_command, write_stats
from workflow.curate.dedup import first_occurrences, is_heldout, near_duplicates
from workflow.io import atomic_dir, read_jsonl
from workflow.params import Params


def run(params: Params, source: str, *, inputs: dict[str, list[str]]) -> None:
    """Write `paths.curate_split_dir(source)` from the source's shard directories (`inputs["shards"]`, in part
    order) and, for exact dedup across sources, the shards of the sources before it (`inputs["earlier"]`)."""
    cfg, domain = params.curation, params.sources[source].domain
    dirs = inputs["shards"]
    for d in [*dirs, *inputs["earlier"]]:
        require_stats(d, shard_command(d))
    digests = [np.load(Path(d) / "digests.npy") for d in dirs]
    sizes = [len(x) for x in digests]
    all_digests = np.concatenate(digests) if digests else np.zeros((0, 16), np.uint8)
    seen: set[bytes] = set()
    for d in inputs["earlier"]:
        seen.update(bytes(row) for row in np.load(Path(d) / "digests.npy"))
    keep = first_occurrences(all_digests, seen) if cfg.exact_dedup else np.ones(len(all_digests), bool)
    exact = ~keep
    near = np.zeros(len(all_digests), bool)
    if cfg.near_dedup and len(all_digests):
        sigs = [np.load(Path(d) / "minhash.npy", mmap_mode="r") for d in dirs]
        near = near_duplicates(sigs, cfg.near_dedup, keep)
    heldout = np.fromiter((is_heldout(bytes(d), cfg.heldout_fraction) for d in all_digests), bool, len(all_digests))
    labels = np.where(exact, EXACT_DUP, np.where(near, NEAR_DUP, np.where(heldout, HELDOUT, TRAIN))).astype(np.uint8)
    with atomic_dir(paths.curate_split_dir(source)) as tmp:
        writer = ShardWriter(tmp / "heldout", cfg.shard_docs)
        offset = 0
        for k, (d, n) in enumerate(zip(dirs, sizes)):
            part = labels[offset:offset + n]
            np.save(tmp / f"labels-{k:05d}.npy", part)
            if (part == HELDOUT).any():
                for i, rec in enumerate(read_jsonl(Path(d) / "docs.jsonl.zst")):
                    if part[i] == HELDOUT:
                        writer.write({"id": rec["id"], "domain": domain, "text": rec["text"], "meta": rec["meta"]})
            offset += n
        writer.close()
        stats = {"duplicates": {"exact": int(exact.sum()), "near": int(near.sum())},
                 "heldout_docs": writer.docs, "heldout_bytes": writer.bytes}
        write_stats(tmp, stats)
    print(f"curate_split {source}: {len(labels):,} docs; duplicates exact {stats['duplicates']['exact']:,}, "
          f"near {stats['duplicates']['near']:,}; heldout {writer.docs:,}")
