"""curate (the gather step): decontaminate one source's training documents and write its output.

    artifacts/curated/<source>/
        part-*.jsonl.zst           training documents {id, domain, text, meta}
        heldout/part-*.jsonl.zst   the held-out split (copied from curate_split)
        stats.json                 inputs (each file read: {url, size, etag | version_id | xxh3}),
                                   docs_in, docs_out, bytes_in, bytes_out, heldout_*, invalid, dropped,
                                   duplicates {exact, near}, decontaminated, files (checksums of the shards);
                                   no timings (byte-identical reruns)

Reads the source's shards and split, every source's held-out split (decontamination) and
`eval.decontaminate_files`. Accounting invariant, checked before writing:
    docs_in = invalid + dropped + duplicates + decontaminated + heldout_docs + docs_out
"""

from __future__ import annotations

import glob
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from workflow import paths
from workflow.curate.common import STATS, TRAIN, ShardWriter, require_stats, shard_command, write_stats
from workflow.curate.decont import NGramIndex, eval_file_texts
from workflow.io import atomic_dir, read_jsonl
from workflow.params import Params, ParamsError


def check_eval_files(files: list[str]) -> None:
    for f in files:
        if not Path(f).is_file():
            raise ParamsError(f"eval.decontaminate_files: '{f}' is not a file (relative to the repo root)")


def build_index(params: Params, heldout_splits: list[str], eval_files: list[str]) -> NGramIndex | None:
    """The n-gram index of every evaluation text: the held-out splits' documents and the eval files."""
    d = params.curation.decontamination
    if d is None:
        return None
    index = NGramIndex(d.ngram)
    for split_dir in heldout_splits:
        for shard in sorted(glob.glob(f"{split_dir}/heldout/part-*.jsonl.zst")):
            index.add(rec["text"] for rec in read_jsonl(shard))
    for f in eval_files:
        index.add(eval_file_texts(f))
    return index


def _sum_counters(items: list[dict]) -> dict:
    total: Counter = Counter()
    for item in items:
        total.update(item)
    return dict(sorted(total.items()))


def run(params: Params, source: str, *, inputs: dict[str, list[str]]) -> None:
    """Write `paths.curated_dir(source)` (atomic, deterministic) from the source's shards and split, every
    held-out split it is decontaminated against (`inputs["heldout"]`) and the eval files."""
    check_eval_files(inputs["eval_files"])
    src, cfg = params.sources[source], params.curation
    dirs = inputs["shards"]
    shard_stats = [require_stats(d, shard_command(d)) for d in dirs]
    split_dir = Path(inputs["split"][0])
    split_stats = require_stats(split_dir, f"curate_split --source {source}")
    for d in inputs["heldout"]:
        require_stats(d, f"curate_split --source {Path(d).parent.name}")
    index = build_index(params, inputs["heldout"], inputs["eval_files"])
    decontaminated = 0
    with atomic_dir(paths.curated_dir(source)) as tmp:
        shutil.copytree(split_dir / "heldout", tmp / "heldout")
        writer = ShardWriter(tmp, cfg.shard_docs)
        try:
            for k, d in enumerate(dirs):
                labels = np.load(split_dir / f"labels-{k:05d}.npy")
                for i, rec in enumerate(read_jsonl(Path(d) / "docs.jsonl.zst")):
                    if labels[i] != TRAIN:
                        continue
                    if index is not None and index.contaminated(rec["text"]):
                        decontaminated += 1
                        continue
                    writer.write({"id": rec["id"], "domain": src.domain, "text": rec["text"], "meta": rec["meta"]})
        finally:
            writer.close()
        examples: dict[str, list[str]] = {}
        for s in shard_stats:
            for reason, where in s["invalid_examples"].items():
                examples[reason] = (examples.get(reason, []) + where)[:5]
        stats = {
            "source": source, "domain": src.domain, "inputs": [e for s in shard_stats for e in s["inputs"]],
            "docs_in": sum(s["docs_in"] for s in shard_stats), "docs_out": writer.docs,
            "heldout_docs": split_stats["heldout_docs"],
            "bytes_in": sum(s["bytes_in"] for s in shard_stats), "bytes_out": writer.bytes,
            "heldout_bytes": split_stats["heldout_bytes"],
            "invalid": _sum_counters([s["invalid"] for s in shard_stats]), "invalid_examples": dict(sorted(examples.items())),
            "dropped": _sum_counters([s["dropped"] for s in shard_stats]),
            "dropped_reasons": _sum_counters([s["dropped_reasons"] for s in shard_stats]),
            "duplicates": split_stats["duplicates"], "decontaminated": decontaminated,
        }
        accounted = (sum(stats["invalid"].values()) + sum(stats["dropped"].values()) + sum(stats["duplicates"].values())
                     + decontaminated + stats["heldout_docs"] + stats["docs_out"])
        assert accounted == stats["docs_in"], f"curate accounting: {accounted} != docs_in {stats['docs_in']}"
        write_stats(tmp, stats)
    if stats["docs_out"] == 0:
        print(f"curate {source}: WARNING no training documents survived; see {paths.curated_dir(source)}/{STATS}", file=sys.stderr)
    print(summary(source, stats))


def summary(source: str, s: dict) -> str:
    return (f"curate {source}: {s['docs_in']:,} in -> {s['docs_out']:,} train + {s['heldout_docs']:,} heldout; "
            f"invalid {sum(s['invalid'].values()):,}, dropped {sum(s['dropped'].values()):,} {s['dropped']}, "
            f"duplicates {s['duplicates']['exact']:,} exact + {s['duplicates']['near']:,} near, "
            f"decontaminated {s['decontaminated']:,}; {s['bytes_in'] / 1e6:.1f} MB in, "
            f"{(s['bytes_out'] + s['heldout_bytes']) / 1e6:.1f} MB out -> {paths.curated_dir(source)}")
