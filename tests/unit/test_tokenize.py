"""Tokenize: curated text -> Megatron .bin/.idx that megatron-core reads back exactly."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from workflow import curate, paths, tokenize, tokenizer
from workflow.io import read_json, read_jsonl
from workflow.params import parse_params

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

TEXTS = [f"Paragraph {i}: the café sells {i * 7} crêpes — “quoted” ✓\n\tindented line {i}\n" * (1 + i % 4)
         for i in range(60)] + ["def f(x):\n    return x  # code\n" * 3, "emoji 🚀 and CJK 漢字 text here"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    (root / "raw").mkdir()
    (root / "raw/a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    params = parse_params({
        "sources": {"web": {"paths": ["raw/*.jsonl"], "domain": "webtext"}},
        "curation": {"min_chars": 8, "heldout_fraction": 0.2, "shard_docs": 16},
        "tokenizer": {"vocab_size": 320, "min_frequency": 2},
        "trunk": {"checkpoints": [10]},
    })
    curate.run(params, "web")
    tokenizer.run(params)
    tokenize.run(params, "web")
    yield params, root
    mp.undo()


def curated_texts(split: str) -> list[str]:
    root = Path(paths.curated_dir("web"))
    root = root if split == "train" else root / "heldout"
    return [r["text"] for p in sorted(root.glob("part-*.jsonl.zst")) for r in read_jsonl(p)]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_round_trip_through_megatron(study, split):
    params, _ = study
    tok = Tokenizer.from_file(paths.tokenizer_file())
    eod = tok.token_to_id(params.tokenizer.eod_token)
    ds = IndexedDataset(paths.tokens_prefix("webtext", split), mmap=True)
    texts = curated_texts(split)
    assert len(ds) == len(texts) > 0
    assert len(ds.document_indices) == len(texts) + 1
    for i, text in enumerate(texts):
        ids = ds[i]
        assert ids.dtype == np.uint16
        assert ids[-1] == eod and eod not in ids[:-1].tolist()
        assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == text


def test_stats_exact_schema(study):
    stats = read_json(paths.tokens_stats("webtext"))
    assert set(stats) == {"domain", "source", "vocab_size", "dtype", "eod", "train", "heldout"}
    assert stats["domain"] == "webtext" and stats["source"] == "web" and stats["dtype"] == "uint16"
    assert stats["vocab_size"] == Tokenizer.from_file(paths.tokenizer_file()).get_vocab_size()
    curated = read_json(Path(paths.curated_dir("web")) / "stats.json")
    for split, n_docs in (("train", curated["docs_out"]), ("heldout", curated["heldout_docs"])):
        ds = IndexedDataset(paths.tokens_prefix("webtext", split), mmap=True)
        assert set(stats[split]) == {"documents", "tokens", "bytes"}
        assert stats[split]["documents"] == n_docs == len(ds)
        assert stats[split]["tokens"] == int(ds.sequence_lengths.sum())
        assert stats[split]["bytes"] == sum(len(t.encode()) for t in curated_texts(split))


def test_rerun_identical_and_no_temporaries(study):
    params, root = study
    files = paths.tokens_files("webtext")

    def digest():
        return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]

    first = digest()
    tokenize.run(params, "web")
    assert digest() == first
    assert not list(Path(paths.tokens_stats("webtext")).parent.glob("*.tmp-*"))


def test_failure_keeps_previous_outputs_and_no_temporaries(study, monkeypatch):
    params, _ = study

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(tokenize, "_encode", boom)
    with pytest.raises(RuntimeError):
        tokenize.run(params, "web")
    tokens_dir = Path(paths.tokens_stats("webtext")).parent
    assert not list(tokens_dir.glob("*.tmp-*"))
    # old, complete outputs untouched
    assert Path(paths.tokens_stats("webtext")).exists()
    monkeypatch.undo()


def test_dtype_choice():
    assert tokenize.token_dtype(4096) is np.uint16
    assert tokenize.token_dtype(65_499) is np.uint16
    assert tokenize.token_dtype(65_500) is np.int32
    assert tokenize.token_dtype(128_256) is np.int32
