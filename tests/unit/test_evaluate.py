"""Held-out evaluation (fixtures in conftest.py)."""

from __future__ import annotations

import math

import pytest
import torch

from workflow import evaluate, paths
from workflow.io import read_json
from workflow.train import trunk


def test_evaluate_schema_and_values(train_study):
    params = train_study(checkpoints=[3])
    trunk.run(params, 3)
    evaluate.run(params, "trunk-3")
    out = read_json(paths.eval_file("trunk-3"))
    assert out["model"] == "trunk-3" and out["lineage"]["kind"] == "trunk"
    assert set(out["heldout"]) == {"prose", "code", "all"}
    pooled_nats = pooled_bytes = 0.0
    for domain in ("prose", "code"):
        r = out["heldout"][domain]
        assert set(r) == {"loss", "bpb", "tokens"}
        assert math.isfinite(r["loss"]) and math.isfinite(r["bpb"]) and 0 < r["loss"] < 10
        assert r["tokens"] == 5 * params.model.seq_length  # max_sequences full windows
        stats = read_json(paths.tokens_stats(domain))["heldout"]
        nbytes = r["tokens"] * stats["bytes"] / stats["tokens"]
        assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / math.log(2) / nbytes)
        pooled_nats += r["loss"] * r["tokens"]
        pooled_bytes += nbytes
    a = out["heldout"]["all"]
    assert a["tokens"] == 10 * params.model.seq_length
    assert a["loss"] == pytest.approx(pooled_nats / a["tokens"])
    assert a["bpb"] == pytest.approx(pooled_nats / math.log(2) / pooled_bytes)
    evaluate.run(params, "trunk-3")  # deterministic
    assert read_json(paths.eval_file("trunk-3")) == out


def test_heldout_windows(train_study):
    prefix = paths.tokens_prefix("prose", "heldout")
    tokens, labels, mask = evaluate.heldout_windows(prefix, 32, None)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    total = sum(len(IndexedDataset(prefix)[i]) for i in range(len(IndexedDataset(prefix))))
    assert int(mask.sum()) == total - 1  # every held-out token predicted once (but the first)
    assert torch.equal(tokens[0, 1:], labels[0, :-1]) and torch.equal(tokens[1, 0], labels[0, -1])
    capped = evaluate.heldout_windows(prefix, 32, 2)
    assert capped[0].shape == (2, 32) and bool(capped[2].all())


def test_evaluate_missing_model(train_study):
    with pytest.raises(Exception, match="trunk-4"):
        evaluate.run(train_study(), "trunk-4")
