"""Curate: raw documents -> clean, deduplicated, decontaminated, domain-tagged zstd shards.

Three stages (workflow/stages.py), each a CLI command and a job in both engines:

    curate_shard --source S --part K   one input file through the per-document pipeline
                                       (readers -> ftfy/NFC -> LID -> Gopher -> C4 -> FineWeb -> PII),
                                       plus content digests and MinHash signatures  (shard.py)
    curate_split --source S            exact + MinHash dedup over all of S's shards, held-out split (split.py)
    curate --source S                  decontaminate S's training documents against every source's
                                       held-out split and eval files, write artifacts/curated/S (gather.py)
"""

from __future__ import annotations

from workflow.curate.dedup import is_heldout, text_digest

__all__ = ["is_heldout", "text_digest"]
