"""Planted duplicates and contamination: exact recall 100%, near-dup recall >= 0.9 at precision >= 0.95,
a planted eval passage never reaches training data, and the DAG edges that carry them."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np

from tests.unit.test_curate import load_split, make_params, stats_of, write_lines
from workflow import stages
from workflow import curate, paths
from workflow.curate.dedup import WORD, MinHasher, first_occurrences, near_duplicates, text_digest
from workflow.params import NearDedup

VOCAB = [f"w{i}" for i in range(3000)]


def shingles(text: str, n: int = 5) -> set[str]:
    words = WORD.findall(text.lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def planted_corpus(seed: int = 0):
    rng = random.Random(seed)
    base = [" ".join(rng.choice(VOCAB) for _ in range(200)) for _ in range(150)]
    docs = list(base)
    for i in range(100):  # near duplicates of the first 100 docs: a few words substituted
        words = base[i].split()
        for _ in range(rng.randint(1, 4)):
            words[rng.randrange(len(words))] = rng.choice(VOCAB)
        docs.append(" ".join(words))
    return docs


def test_minhash_recall_and_precision():
    docs = planted_corpus()
    cfg = NearDedup()
    hasher = MinHasher(cfg)
    sigs = np.stack([hasher.signature(d) for d in docs])
    flagged = near_duplicates([sigs[:120], sigs[120:]], cfg, np.ones(len(docs), bool))
    truth = np.zeros(len(docs), bool)  # a doc is a true near duplicate if an earlier doc has Jaccard >= 0.8
    for i, j in itertools.combinations(range(len(docs)), 2):
        if jaccard(docs[i], docs[j]) >= 0.8:
            truth[j] = True
    assert truth.sum() >= 80
    recall = (flagged & truth).sum() / truth.sum()
    precision = (flagged & truth).sum() / max(flagged.sum(), 1)
    assert recall >= 0.9 and precision >= 0.95, (recall, precision)


def test_exact_dedup_is_complete_and_keeps_the_first():
    texts = ["a", "b", "a", "c", "b", "a"]
    digests = np.frombuffer(b"".join(text_digest(t) for t in texts), np.uint8).reshape(-1, 16)
    assert first_occurrences(digests).tolist() == [True, True, False, True, False, False]
    assert first_occurrences(digests, {text_digest("c")}).tolist() == [True, True, False, False, False, False]


def test_curate_removes_planted_duplicates_across_shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    docs = planted_corpus(1)[:60] + planted_corpus(1)[150:190]  # 60 originals + 40 near duplicates
    exact = docs[:25]
    write_lines(tmp_path / "raw/a.jsonl", [json.dumps({"text": t}).encode() for t in docs[:50]])
    write_lines(tmp_path / "raw/b.jsonl.zst", [json.dumps({"text": t}).encode() for t in docs[50:] + exact])
    stages.build(make_params(near_dedup={}, heldout_fraction=0.1), "curate", source="web")
    stats = stats_of()
    assert stats["duplicates"]["exact"] == len(exact)
    assert 36 <= stats["duplicates"]["near"] <= 40
    kept = [r["text"] for r in load_split("train") + load_split("heldout")]
    assert len(set(kept)) == len(kept)
    assert set(docs[:60]) <= set(kept)  # every original survives, in the first shard's order


EVAL_PASSAGE = ("in the beginning the committee wrote a careful passage about benchmark questions that "
                "must never appear in any training document at all")


def test_planted_eval_passage_is_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clean = [f"clean document {i} " + " ".join(random.Random(i).choice(VOCAB) for _ in range(40)) for i in range(20)]
    dirty = "Some preamble text. " + EVAL_PASSAGE.upper().replace(" ", "  ") + ", and more words after it."
    write_lines(tmp_path / "raw/a.jsonl", [json.dumps({"text": t}).encode() for t in clean + [dirty]])
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals/task.jsonl").write_text(json.dumps({"question": {"stem": EVAL_PASSAGE}, "answer": "x"}) + "\n")
    stages.build(make_params(eval_files=["evals/task.jsonl"], decontamination={"ngram": 13}, heldout_fraction=0.0), "curate", source="web")
    assert stats_of()["decontaminated"] == 1
    assert sorted(r["text"] for r in load_split("train")) == sorted(clean)


def test_training_data_is_decontaminated_against_other_sources_heldout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(3)
    a_docs = [" ".join(rng.choice(VOCAB) for _ in range(60)) for _ in range(40)]
    sources = {"a": {"paths": ["raw/a.jsonl"], "domain": "a"}, "b": {"paths": ["raw/b.jsonl"], "domain": "b"}}
    params = make_params(sources=sources, decontamination={}, heldout_fraction=0.2)
    held = [t for t in a_docs if curate.is_heldout(text_digest(t), 0.2)]
    assert held
    b_docs = ["quoting source a: " + held[0], "unrelated " + " ".join(rng.choice(VOCAB) for _ in range(30))]
    b_docs = [t for t in b_docs if not curate.is_heldout(text_digest(t), 0.2)] or b_docs
    write_lines(tmp_path / "raw/a.jsonl", [json.dumps({"text": t}).encode() for t in a_docs])
    write_lines(tmp_path / "raw/b.jsonl", [json.dumps({"text": t}).encode() for t in b_docs])
    stages.build(params, "curate", source="b")
    assert all(held[0] not in r["text"] for r in load_split("train", "b"))
    assert stats_of("b")["decontaminated"] >= 1
    assert stages.flat(stages.STAGES["curate"].inputs(params, source="b")) == [
        paths.curate_shard_dir("b", 0), paths.curate_split_dir("b"), paths.curate_split_dir("a")]


def test_cross_source_exact_dedup_edge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sources = {"a": {"paths": ["raw/a.jsonl"], "domain": "a"}, "b": {"paths": ["raw/b*.jsonl"], "domain": "b"}}
    text = "a shared document that both sources contain, long enough to pass"
    write_lines(tmp_path / "raw/a.jsonl", [json.dumps({"text": text}).encode()])
    write_lines(tmp_path / "raw/b1.jsonl", [json.dumps({"text": text}).encode(), json.dumps({"text": text + "!"}).encode()])
    write_lines(tmp_path / "raw/b2.jsonl", [json.dumps({"text": "b only " + text}).encode()])
    params = make_params(sources=sources, exact_dedup_across_sources=True, heldout_fraction=0.0)
    split_inputs = stages.STAGES["curate_split"].inputs
    assert split_inputs(params, source="b") == {"shards": [paths.curate_shard_dir("b", 0), paths.curate_shard_dir("b", 1)],
                                               "earlier": [paths.curate_shard_dir("a", 0)]}
    assert stages.STAGES["curate_shard"].inputs(params, source="b", part="00001") == {"raw": ["raw/b2.jsonl"]}
    stages.build(params, "curate", source="b")
    assert stats_of("b")["duplicates"]["exact"] == 1
    assert split_inputs(make_params(sources=sources), source="b")["earlier"] == []
