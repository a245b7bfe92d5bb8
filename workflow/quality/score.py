"""score: one scorer's per-document scores of one source, as attribute shards beside the curated shards.

    artifacts/attributes/<scorer>/<source>/
        part-NNNNN.jsonl.zst   {"id", "score"}, one line per document of curated part-NNNNN, in its order
        stats.json             docs, score range, checksums

Dolma's layout: the documents are never rewritten, so a new threshold (`select`) never re-scores. Scores are
higher-is-better for every kind: fasttext = P(`label`); perplexity = minus the loss per UTF-8 byte, in nats,
of the document's first `max_chars` characters under the causal LM (windows of its context length)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from workflow import paths
from workflow.curate.common import JsonlZst, require_stats, write_stats
from workflow.io import atomic_dir, read_jsonl
from workflow.params import Params, Scorer
from workflow.quality import fasttext_model

BATCH = 512  # documents per scoring call


def fasttext_scorer(cfg: Scorer, model_path: str) -> Callable[[list[str]], list[float]]:
    model = fasttext_model.load(model_path)
    label, max_chars = cfg.label, cfg.max_chars
    return lambda texts: fasttext_model.scores(model, [fasttext_model.line(t, max_chars) for t in texts], label)


def perplexity_scorer(cfg: Scorer, model_dir: str) -> Callable[[list[str]], list[float]]:
    """Minus nats per byte under a Hugging Face causal LM directory (e.g. `export-hf`'s), on CPU in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    window = int(getattr(model.config, "max_position_embeddings", 1024))
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    max_chars = cfg.max_chars

    @torch.no_grad()
    def score(texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            text = text[:max_chars]
            ids = [start, *tok(text, add_special_tokens=False)["input_ids"]]
            nats = 0.0
            for i in range(0, len(ids) - 1, window):  # non-overlapping windows; each predicts its own tokens
                chunk = torch.tensor([ids[i:i + window + 1]])
                logits = model(chunk[:, :-1]).logits
                nats += float(torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
            out.append(-nats / max(len(text.encode("utf-8")), 1))
        return out

    return score


def scorer_for(cfg: Scorer, model: str) -> Callable[[list[str]], list[float]]:
    return fasttext_scorer(cfg, model) if cfg.kind == "fasttext" else perplexity_scorer(cfg, model)


def model_file(cfg: Scorer, model_input: str) -> str:
    """The model a score job loads: a trained classifier dir's model.bin, or the declared file or directory."""
    if Path(model_input).is_dir() and cfg.kind == "fasttext":
        require_stats(model_input, f"classifier --scorer {Path(model_input).name}")
        return str(Path(model_input) / "model.bin")
    if not Path(model_input).exists():
        raise FileNotFoundError(f"{model_input}: the scorer's model is missing (quality.scorers.*.model)")
    return model_input


def run(params: Params, scorer: str, source: str, *, inputs: dict[str, list[str]]) -> None:
    cfg = params.quality.scorers[scorer]
    curated = inputs["curated"][0]
    require_stats(curated, f"curate --source {source}")
    score = scorer_for(cfg, model_file(cfg, inputs["model"][0]))
    docs, lo, hi = 0, float("inf"), float("-inf")
    t0 = time.perf_counter()
    with atomic_dir(paths.attributes_dir(scorer, source)) as tmp:
        for shard in sorted(Path(curated).glob("part-*.jsonl.zst")):
            out = JsonlZst(tmp / shard.name)
            try:
                batch: list[dict] = []
                for rec in [*read_jsonl(shard), None]:
                    if rec is not None:
                        batch.append(rec)
                    if batch and (rec is None or len(batch) == BATCH):
                        for r, s in zip(batch, score([r["text"] for r in batch])):
                            out.write({"id": r["id"], "score": round(s, 6)})
                            lo, hi = min(lo, s), max(hi, s)
                        docs += len(batch)
                        batch = []
            finally:
                out.close()
        write_stats(tmp, {"scorer": scorer, "source": source, "kind": cfg.kind, "docs": docs,
                          "min": round(lo, 6) if docs else None, "max": round(hi, 6) if docs else None})
    dt = time.perf_counter() - t0
    print(f"score {scorer} {source}: {docs:,} documents in {dt:.1f}s ({docs / max(dt, 1e-9):,.0f} docs/s) "
          f"-> {paths.attributes_dir(scorer, source)}", file=sys.stderr if docs == 0 else sys.stdout)
