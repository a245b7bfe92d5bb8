"""Curate: raw documents -> clean, deduplicated, decontaminated, domain-tagged zstd shards.

Three steps, each a CLI subcommand and a job in both engines (rules/curate.smk, dvc.yaml):

    curate-shard --source S --part K   one input file through the per-document pipeline
                                       (readers -> ftfy/NFC -> LID -> Gopher -> C4 -> FineWeb -> PII),
                                       plus content digests and MinHash signatures  (shard.py)
    curate-split --source S            exact + MinHash dedup over all of S's shards, held-out split (split.py)
    curate --source S                  decontaminate S's training documents against every source's
                                       held-out split and eval files, write artifacts/curated/S (gather.py)

`python -m workflow curate --source S` alone also works: `run()` first brings every intermediate
it needs up to date in-process (reusing those whose fingerprint, a hash of the params and input
bytes, still matches), so a bare CLI run and an engine run write the same bytes.
"""

from __future__ import annotations

from workflow.curate import gather, shard, split
from workflow.curate.common import read_stats
from workflow.curate.dedup import is_heldout, text_digest
from workflow.curate.readers import expand_paths, input_entry
from workflow.params import Params
from workflow import paths

__all__ = ["run", "ensure_split", "is_heldout", "text_digest"]


def ensure_shards(params: Params, source: str) -> None:
    for part, path in enumerate(expand_paths(params, source)):
        stats = read_stats(paths.curate_shard_dir(source, part))
        entry = input_entry(path)  # a remote file: one HEAD, its body is read only when it changed
        if stats is None or stats.get("fingerprint") != shard.shard_fingerprint(params, source, entry):
            shard.run(params, source, part, entry)


def ensure_split(params: Params, source: str) -> None:
    for s in [*split.earlier_sources(params, source), source]:
        ensure_shards(params, s)
    stats = read_stats(paths.curate_split_dir(source))
    if stats is None or stats.get("fingerprint") != split.split_fingerprint(params, source):
        split.run(params, source)


def run(params: Params, source: str) -> None:
    """Curate `sources[source]` into `paths.curated_dir(source)`, computing missing intermediates."""
    needed = list(dict.fromkeys([*gather.decont_sources(params), source]))
    for s in needed:  # a missing input path or eval file is an error before any work
        expand_paths(params, s)
    gather.check_eval_files(params)
    for s in needed:
        ensure_split(params, s)
    gather.run(params, source)
