"""Weight averaging of model dirs (fixtures in conftest.py)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.unit.conftest import train_params_dict
from workflow import merge, paths
from workflow.params import parse_params
from workflow.train import checkpoint as ckpt
from workflow.train import trunk


@pytest.fixture
def merge_params(train_study):
    raw = train_params_dict(checkpoints=[2, 4, 6])
    raw["merges"] = {"avg": {"models": ["trunk-2", "trunk-4", "trunk-6"]},
                     "nested": {"models": ["merge-avg", "trunk-6"]}}
    params = parse_params(raw)
    trunk.run(params, None)
    return params


def test_merge_is_elementwise_mean(merge_params, train_weights):
    merge.run(merge_params, "avg")
    inputs = [train_weights(paths.trunk_dir(s), merge_params) for s in (2, 4, 6)]
    merged = train_weights(paths.merge_dir("avg"), merge_params)
    assert merged.keys() == inputs[0].keys()
    for k, v in merged.items():
        expected = (torch.stack([w[k].double() for w in inputs]).sum(0) / 3).to(v.dtype)
        assert torch.equal(v, expected), k
        assert not torch.equal(v, inputs[0][k]) or k.endswith("layernorm.weight")
    meta = ckpt.read_meta(paths.merge_dir("avg"))
    assert meta["kind"] == "merge" and meta["has_optimizer"] is False and "omitted" in meta["optimizer"]
    assert [i["model"] for i in meta["lineage"]["inputs"]] == ["trunk-2", "trunk-4", "trunk-6"]
    assert ckpt.incomplete(paths.merge_dir("avg")) is None


def test_merge_of_a_merge_and_no_training_from_it(merge_params, train_weights):
    merge.run(merge_params, "avg")
    merge.run(merge_params, "nested")
    avg = train_weights(paths.merge_dir("avg"), merge_params)
    last = train_weights(paths.trunk_dir(6), merge_params)
    nested = train_weights(paths.merge_dir("nested"), merge_params)
    for k in nested:
        assert torch.equal(nested[k], ((avg[k].double() + last[k].double()) / 2).to(nested[k].dtype))
    from workflow.train.loop import Session

    session = Session(merge_params)
    with pytest.raises(ckpt.CheckpointError, match="no optimizer state"):
        session.restore(paths.merge_dir("avg"))


def test_merge_missing_input(train_study):
    raw = train_params_dict(checkpoints=[2, 4])
    raw["merges"] = {"x": {"models": ["trunk-2", "trunk-4"]}}
    with pytest.raises(ckpt.CheckpointError, match="trunk-2"):
        merge.run(parse_params(raw), "x")
