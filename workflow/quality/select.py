"""select: one data variant from one scorer's attributes: per source, which curated training documents it keeps.

    artifacts/selected/<selection>/
        <source>.npy   bool keep mask over the source's curated training documents, in curated order
        stats.json     per source: documents, kept, the lowest kept score, a histogram of the scores; checksums

`threshold` keeps documents scoring at least it; `keep_fraction` the top round(fraction x n) of each source by
score (ties: curated order). Cheap: it reads only scores, so a threshold sweep never re-scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workflow import paths
from workflow.curate.common import require_stats, write_stats
from workflow.io import atomic_dir, read_jsonl
from workflow.params import Params

BINS = 20


def read_scores(attributes: str) -> np.ndarray:
    """A source's scores in curated order (every part of the attribute dir)."""
    require_stats(attributes, f"score --scorer {Path(attributes).parent.name} --source {Path(attributes).name}")
    return np.array([r["score"] for part in sorted(Path(attributes).glob("part-*.jsonl.zst"))
                     for r in read_jsonl(part)], dtype=np.float64)


def keep_mask(scores: np.ndarray, threshold: float | None, keep_fraction: float | None) -> np.ndarray:
    if threshold is not None:
        return scores >= threshold
    keep = np.zeros(len(scores), dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:round(keep_fraction * len(scores))]] = True
    return keep


def run(params: Params, selection: str, *, inputs: dict[str, list[str]]) -> None:
    cfg = params.quality.selections[selection]
    scores = {Path(d).name: read_scores(d) for d in inputs["scores"]}
    everything = np.concatenate([*scores.values(), np.zeros(0)])
    edges = np.linspace(everything.min(), everything.max(), BINS + 1) if len(everything) else np.linspace(0, 1, BINS + 1)
    rule = {"threshold": cfg.threshold} if cfg.threshold is not None else {"keep_fraction": cfg.keep_fraction}
    out = {}
    with atomic_dir(paths.selected_dir(selection)) as tmp:
        for source, s in scores.items():
            keep = keep_mask(s, cfg.threshold, cfg.keep_fraction)
            np.save(tmp / f"{source}.npy", keep)
            out[source] = {"docs": int(len(s)), "kept": int(keep.sum()),
                           "lowest_kept": round(float(s[keep].min()), 6) if keep.any() else None,
                           "histogram": np.histogram(s, bins=edges)[0].tolist()}
        write_stats(tmp, {"selection": selection, "scorer": cfg.scorer, **rule,
                          "bin_edges": [round(float(e), 6) for e in edges], "sources": out})
    kept = ", ".join(f"{s} {v['kept']:,}/{v['docs']:,}" for s, v in out.items())
    print(f"select {selection}: {rule} kept {kept} -> {paths.selected_dir(selection)}")
