"""Quality filtering: the fastText classifier (deterministic), attribute shards beside the curated shards, selection
by threshold and keep_fraction, a variant's tokens, and the perplexity scorer, on small synthetic curated sources."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from workflow import paths, stages
from workflow.curate.common import JsonlZst, write_stats
from workflow.io import read_json, read_jsonl, write_json
from workflow.params import ParamsError, parse_params
from workflow.quality.select import keep_mask
from workflow.report.plots import score_plot
from workflow.report.selection import selection_rows
from workflow.tokenize import kept_chunks

GOOD = "the theorem follows from the lemma because every bounded sequence has a convergent subsequence".split()
SPAM = "click here buy now free offer limited deal cheap viagra casino win prize subscribe".split()


def curated(source: str, words: list[str], n: int, seed: int = 0) -> None:
    """A curated source dir of `n` documents (two shards), as `curate` writes it."""
    rng, d = random.Random(f"{source}{seed}"), Path(paths.curated_dir(source))
    d.mkdir(parents=True)
    for part in range(2):
        out = JsonlZst(d / f"part-{part:05d}.jsonl.zst")
        for i in range(n // 2):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
            out.write({"id": f"{source}-{part}-{i}", "domain": source, "text": text, "meta": {}})
        out.close()
    write_stats(d, {"source": source})


def study(**quality) -> dict:
    return {"sources": {s: {"paths": [f"raw/{s}.jsonl"], "domain": s} for s in ("book", "web")},
            "trunk": {"checkpoints": [2]},
            "quality": quality or {"scorers": {"q": {"kind": "fasttext", "positives": ["book"], "negatives": ["web"],
                                                     "epoch": 3, "dim": 8}},
                                   "selections": {"top": {"scorer": "q", "keep_fraction": 0.25},
                                                  "above": {"scorer": "q", "threshold": 0.5}}}}


@pytest.fixture
def sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    curated("book", GOOD, 200)
    curated("web", GOOD[:6] + SPAM, 200)  # web shares some words with the book
    return parse_params(study())


def test_classifier_is_deterministic_and_scores_sit_beside_the_documents(sources):
    params = sources
    stages.call(params, "classifier", scorer="q")
    model = Path(paths.classifier_dir("q")) / "model.bin"
    first = model.read_bytes()
    stages.call(params, "classifier", scorer="q")
    assert model.read_bytes() == first  # one thread and a seed: the same model, byte for byte
    for source in params.sources:
        stages.call(params, "score", scorer="q", source=source)
        curated_parts = sorted(Path(paths.curated_dir(source)).glob("part-*.jsonl.zst"))
        attr_parts = sorted(Path(paths.attributes_dir("q", source)).glob("part-*.jsonl.zst"))
        assert [p.name for p in attr_parts] == [p.name for p in curated_parts]
        for c, a in zip(curated_parts, attr_parts):
            assert [r["id"] for r in read_jsonl(c)] == [r["id"] for r in read_jsonl(a)]
    mean = {s: np.mean([r["score"] for p in Path(paths.attributes_dir("q", s)).glob("*.zst") for r in read_jsonl(p)])
            for s in params.sources}
    assert mean["book"] > mean["web"] + 0.3, mean


def test_selections_keep_by_threshold_or_top_fraction_per_source(sources):
    params = sources
    stages.call(params, "classifier", scorer="q")
    for source in params.sources:
        stages.call(params, "score", scorer="q", source=source)
    for selection in ("top", "above"):
        stages.call(params, "select", selection=selection)
    top, above = (read_json(Path(paths.selected_dir(s)) / "stats.json") for s in ("top", "above"))
    assert {s: v["kept"] for s, v in top["sources"].items()} == {"book": 50, "web": 50}  # 25% of each source
    stats = read_json(Path(paths.classifier_dir("q")) / "stats.json")
    assert stats["train_accuracy"] == 1.0  # so P(book) >= 0.5 on every book document and no web one
    assert above["threshold"] == 0.5 and {s: v["kept"] for s, v in above["sources"].items()} == {"book": 200, "web": 0}
    for st in (top, above):
        assert all(sum(v["histogram"]) == v["docs"] == 200 for v in st["sources"].values())
    for sel in ("top", "above"):  # what tokenize_selected writes beside the tokens, for the report
        for domain in ("book", "web"):
            write_json(paths.tokens_stats(domain, sel), {"train": {"tokens": 1000 if domain == "book" else 0}})
    rows = selection_rows(params, ["top", "above"])
    assert rows[0] == ["top", "book", "q", "top 25%", "50", "200", "25.0", rows[0][7], "1,000"]
    assert rows[3][:7] == ["above", "web", "q", "threshold 0.5", "0", "200", "0.0"] and rows[3][7] == ""
    assert score_plot(["top", "above"]).startswith(b"\x89PNG")
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert keep_mask(scores, 0.5, None).tolist() == [False, True, True, True, False]  # threshold: at least
    assert keep_mask(scores, None, 0.4).tolist() == [False, True, False, True, False]  # top 2
    assert keep_mask(np.array([0.5, 0.5, 0.5]), None, 0.34).tolist() == [True, False, False]  # ties: curated order


def test_a_variant_tokenizes_only_the_documents_it_keeps(sources):
    parts = sorted(str(p) for p in Path(paths.curated_dir("book")).glob("part-*.jsonl.zst"))
    keep = np.zeros(200, dtype=bool)
    keep[[0, 5, 150, 199]] = True
    ids = [line.split(b'"id": "')[1].split(b'"')[0].decode()
           for chunk, _ in kept_chunks(parts, keep, "test") for line in chunk.splitlines()]
    assert ids == ["book-0-0", "book-0-5", "book-1-50", "book-1-99"]
    with pytest.raises(ValueError, match="rerun the select stage"):
        list(kept_chunks(parts, keep[:-1], "test"))


def test_bad_quality_settings_are_named():
    with pytest.raises(ParamsError, match=r"trunk.data: 'nope' is not a key of quality.selections"):
        parse_params({**study(), "trunk": {"checkpoints": [2], "data": "nope"}})
    with pytest.raises(ParamsError, match=r"trunks.b.data: 'nope' is not a key of quality.selections"):
        parse_params({**study(), "trunks": {"a": {"data": "top"}, "b": {"data": "nope"}}})
    assert {t: s.data for t, s in parse_params({**study(), "trunks": {"a": {}, "b": {"data": "top"}}}).trunks.items()} == \
        {"a": None, "b": "top"}  # each trunk its own data variant
    with pytest.raises(ParamsError, match=r"quality.selections.top: .*exactly one of threshold and keep_fraction"):
        parse_params(study(scorers={"q": {"kind": "fasttext", "model": "m.bin"}},
                           selections={"top": {"scorer": "q", "threshold": 0.1, "keep_fraction": 0.5}}))
    with pytest.raises(ParamsError, match=r"quality.scorers.q: .*either `model`"):
        parse_params(study(scorers={"q": {"kind": "fasttext", "positives": ["book"]}}))
    with pytest.raises(ParamsError, match=r"quality.selections.top.scorer: 'x' is not a key"):
        parse_params(study(scorers={}, selections={"top": {"scorer": "x", "threshold": 0.1}}))


def test_perplexity_scorer_is_minus_nats_per_byte(tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from workflow.params import Scorer
    from workflow.quality.score import perplexity_scorer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([" ".join(GOOD + SPAM)] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eod|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|eod|>", eos_token="<|eod|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=16)).eval()
    model.save_pretrained(tmp_path / "lm")
    hf_tok.save_pretrained(tmp_path / "lm")
    texts = [" ".join(GOOD), " ".join(SPAM[:3])]  # the first is longer than one 16-token window
    got = perplexity_scorer(Scorer(kind="perplexity", model=str(tmp_path / "lm")), str(tmp_path / "lm"))(texts)
    for text, score in zip(texts, got):
        ids = torch.tensor([[hf_tok.bos_token_id, *hf_tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():  # HF's own mean loss per window (causal: the extra last token changes no logit)
            nats = sum(float(model(c, labels=c).loss) * (c.shape[1] - 1)
                       for c in (ids[:, i:i + 17] for i in range(0, ids.shape[1] - 1, 16)))
        assert score == pytest.approx(-nats / len(text.encode()), rel=1e-5)
        assert -8 < score < 0
