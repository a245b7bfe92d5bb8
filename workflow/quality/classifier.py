"""classifier: train one fastText quality classifier from declared positive and negative sources (DCLM-style).

    artifacts/classifier/<scorer>/
        model.bin     the fastText model (labels: the scorer's `label` for positives, __label__lq)
        stats.json    the sources and documents of each class, training accuracy, checksums

Examples are the sources' curated training documents (their first `max_examples`, in curated order), each cut
to `max_chars`; one thread and the scorer's seed make training deterministic (the same model.bin bytes; it
runs in a fresh interpreter, see `fasttext_model.train`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from workflow import paths
from workflow.curate.common import require_stats, write_stats
from workflow.io import atomic_dir, read_jsonl
from workflow.params import Params
from workflow.quality import fasttext_model
from workflow.tokenize import shards


def examples(curated: list[str], limit: int, max_chars: int) -> list[str]:
    out: list[str] = []
    for d in curated:
        require_stats(d, f"curate --source {Path(d).name}")
        for shard in shards(Path(d).name, "train"):
            for rec in read_jsonl(shard):
                if len(out) >= limit:
                    return out
                text = fasttext_model.line(rec["text"], max_chars)
                if text.strip():
                    out.append(text)
    return out


def run(params: Params, scorer: str, *, inputs: dict[str, list[str]]) -> None:
    cfg = params.quality.scorers[scorer]
    fasttext_model.module()  # the training-capable module, or a message saying how to get it
    pos = examples(inputs["positives"], cfg.max_examples, cfg.max_chars)
    neg = examples(inputs["negatives"], cfg.max_examples, cfg.max_chars)
    if not pos or not neg:
        raise ValueError(f"classifier {scorer}: no training documents among the "
                         f"{'positives' if not pos else 'negatives'} (quality.scorers.{scorer})")
    lines = [f"{cfg.label} {t}" for t in pos] + [f"{fasttext_model.NEGATIVE} {t}" for t in neg]
    with atomic_dir(paths.classifier_dir(scorer)) as tmp, tempfile.TemporaryDirectory() as work:
        train_file = os.path.join(work, "train.txt")
        Path(train_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        fasttext_model.train(train_file, str(tmp / "model.bin"), seed=cfg.seed, thread=1, epoch=cfg.epoch, lr=cfg.lr,
                             dim=cfg.dim, wordNgrams=cfg.word_ngrams, bucket=cfg.buckets, verbose=0)
        model = fasttext_model.load(str(tmp / "model.bin"))
        got = fasttext_model.scores(model, pos + neg, cfg.label)
        correct = sum(s >= 0.5 for s in got[:len(pos)]) + sum(s < 0.5 for s in got[len(pos):])
        stats = {"scorer": scorer, "positives": {"sources": list(cfg.positives), "docs": len(pos)},
                 "negatives": {"sources": list(cfg.negatives), "docs": len(neg)},
                 "train_accuracy": round(correct / len(got), 4)}
        write_stats(tmp, stats)
    print(f"classifier {scorer}: {len(pos):,} positive / {len(neg):,} negative documents, "
          f"training accuracy {stats['train_accuracy']:.3f} -> {paths.classifier_dir(scorer)}")
