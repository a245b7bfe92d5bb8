"""Weight averaging of model dirs (fixtures in conftest.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.conftest import train_params_dict
from workflow import stages
from workflow import merge, paths
from workflow.params import parse_params
from workflow.train import checkpoint as ckpt


@pytest.fixture
def merge_params(train_study):
    raw = train_params_dict(checkpoints=[2, 4, 6])
    raw["merges"] = {"avg": {"models": ["main@2", "main@4", "main@6"]},
                     "nested": {"models": ["merge-avg", "main@6"]},
                     "weighted": {"models": ["main@2", "main@4", "main@6"], "method": "weighted", "weights": [1, 2, 5]},
                     "lawa": {"trunk_last_k": 2, "method": "loss_weighted", "temperature": 0.05}}
    params = parse_params(raw)
    stages.call(params, "trunk")
    return params


def test_merge_is_elementwise_mean(merge_params, train_weights):
    stages.call(merge_params, "merge", name="avg")
    inputs = [train_weights(paths.trunk_dir("main", s), merge_params) for s in (2, 4, 6)]
    merged = train_weights(paths.merge_dir("avg"), merge_params)
    assert merged.keys() == inputs[0].keys()
    for k, v in merged.items():
        expected = (torch.stack([w[k].double() for w in inputs]).sum(0) / 3).to(v.dtype)
        assert torch.equal(v, expected), k
        assert not torch.equal(v, inputs[0][k]) or k.endswith("layernorm.weight")
    meta = ckpt.read_meta(paths.merge_dir("avg"))
    assert meta["kind"] == "merge" and meta["has_optimizer"] is False and "omitted" in meta["optimizer"]
    assert [i["model"] for i in meta["lineage"]["inputs"]] == ["main@2", "main@4", "main@6"]
    assert ckpt.incomplete(paths.merge_dir("avg")) is None


def test_merge_of_a_merge_and_no_training_from_it(merge_params, train_weights):
    stages.call(merge_params, "merge", name="avg")
    stages.call(merge_params, "merge", name="nested")
    avg = train_weights(paths.merge_dir("avg"), merge_params)
    last = train_weights(paths.trunk_dir("main", 6), merge_params)
    nested = train_weights(paths.merge_dir("nested"), merge_params)
    for k in nested:
        assert torch.equal(nested[k], ((avg[k].double() + last[k].double()) / 2).to(nested[k].dtype))
    from workflow.train.loop import Session

    session = Session(merge_params)
    with pytest.raises(ckpt.CheckpointError, match="no optimizer state"):
        session.restore(paths.merge_dir("avg"))


def test_merge_missing_input(train_study):
    raw = train_params_dict(checkpoints=[2, 4])
    raw["merges"] = {"x": {"models": ["main@2", "main@4"]}}
    with pytest.raises(ckpt.CheckpointError, match="trunk/main/step-2"):
        stages.call(parse_params(raw), "merge", name="x")


def weighted_mean(inputs: list[dict], coeffs: list[float]) -> dict:
    """The spec: float32(sum_i c_i * float64(x_i) / sum_i c_i), summed in input order."""
    out = {}
    for k in inputs[0]:
        acc = torch.zeros_like(inputs[0][k], dtype=torch.float64)
        for w, c in zip(inputs, coeffs):
            acc = acc + w[k].double() * c
        out[k] = (acc / sum(coeffs)).to(inputs[0][k].dtype)
    return out


def test_weighted_merge_is_exact(merge_params, train_weights):
    stages.call(merge_params, "merge", name="weighted")
    inputs = [train_weights(paths.trunk_dir("main", s), merge_params) for s in (2, 4, 6)]
    merged = train_weights(paths.merge_dir("weighted"), merge_params)
    expected = weighted_mean(inputs, [1.0, 2.0, 5.0])
    assert merged.keys() == expected.keys()
    for k in merged:
        assert torch.equal(merged[k], expected[k]), k
    meta = ckpt.read_meta(paths.merge_dir("weighted"))
    assert [i["weight"] for i in meta["lineage"]["inputs"]] == [1 / 8, 2 / 8, 5 / 8]


def test_loss_weighted_merge_of_last_k(merge_params, train_weights):
    from workflow.io import write_json

    merge_inputs = stages.STAGES["merge"].inputs
    assert merge_params.merge_inputs("lawa") == ["main@4", "main@6"]
    assert merge_inputs(merge_params, name="lawa") == {"models": [paths.trunk_dir("main", 4), paths.trunk_dir("main", 6)],
                                                       "evals": [paths.eval_file("main@4"), paths.eval_file("main@6")]}
    assert merge_inputs(merge_params, name="weighted") == {"models": [paths.trunk_dir("main", s) for s in (2, 4, 6)], "evals": []}
    with pytest.raises(ckpt.CheckpointError, match="main@4.json: missing"):
        stages.call(merge_params, "merge", name="lawa")
    losses = {"main@4": 5.25, "main@6": 5.2}  # held-out losses as `evaluate` reports them
    for model, loss in losses.items():
        write_json(paths.eval_file(model), {"model": model, "heldout": {"all": {"loss": loss, "bpb": 1.0, "tokens": 10}}})
    softmax = torch.softmax(-torch.tensor(list(losses.values()), dtype=torch.float64) / 0.05, dim=0).tolist()
    assert softmax == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])  # loss gap = temperature
    stages.call(merge_params, "merge", name="lawa")
    meta = ckpt.read_meta(paths.merge_dir("lawa"))
    assert [i["weight"] for i in meta["lineage"]["inputs"]] == pytest.approx(softmax, rel=1e-12)
    inputs = [train_weights(paths.trunk_dir("main", s), merge_params) for s in (4, 6)]
    expected = weighted_mean(inputs, merge.coefficients(merge_params, "lawa", [paths.eval_file(m) for m in losses], 2))
    merged = train_weights(paths.merge_dir("lawa"), merge_params)
    for k in merged:
        assert torch.equal(merged[k], expected[k]), k


@pytest.mark.parametrize("merge_cfg, key", [
    ({"models": ["main@4"], "trunk_last_k": 2}, "merges.m: give exactly one"),
    ({}, "merges.m: give exactly one"),
    ({"trunk_last_k": 3}, "merges.m.trunk_last_k: 3 is more than the 2"),
    ({"trunk_last_k": 2, "weights": [1, 1]}, "merges.m.weights: required by method weighted"),
    ({"trunk_last_k": 2, "method": "weighted", "weights": [1, 1, 1]}, "merges.m.weights: 3 weights for 2 models"),
    ({"trunk_last_k": 2, "method": "loss_weighted"}, "merges.m.temperature: required"),
    ({"trunk_last_k": 2, "method": "weighted", "weights": [1, 0]}, "merges.m.weights.1"),
])
def test_merge_schema_errors(merge_cfg, key):
    from workflow.params import ParamsError

    raw = train_params_dict(checkpoints=[4, 8])
    raw["merges"] = {"m": merge_cfg}
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        parse_params(raw)
