"""Weight averaging: `artifacts/merge/<name>` = a weighted element-wise mean of the inputs' weights.

    merged = float32( sum_i c_i * float64(x_i) / sum_i c_i )      (sum in input order)

with c_i = 1 (`uniform`), the given `weights` (`weighted`), or exp(-(L_i - min_j L_j) / temperature)
(`loss_weighted`, L_i = input i's pooled held-out loss from `artifacts/eval/<id>.json`; a softmax of -L/T).
The inputs are `models` or, with `trunk_last_k`, the last k trunk checkpoints (LAWA).

Streaming: the model holds one input at a time (loaded in place from its checkpoint) and one float64
accumulator holds the running sum, so memory does not grow with the number of inputs (bench/merge.py).
The result is a regular model dir (megatron checkpoint with the model's `_extra_state` objects intact, so
evaluate, export and later merges load it like any other) without optimizer state (`meta.json`:
`has_optimizer: false`).
"""

from __future__ import annotations

import math

import torch

from workflow import paths
from workflow.io import atomic_dir, read_json
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train.loop import setup
from workflow.train.model import build_model


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not k.endswith("_extra_state")}


def heldout_loss(model_id: str) -> float:
    """Pooled held-out loss of a model (its evaluate output); what `loss_weighted` weighs by."""
    path = paths.eval_file(model_id)
    try:
        return float(read_json(path)["heldout"]["all"]["loss"])
    except FileNotFoundError:
        raise ckpt.CheckpointError(f"{path}: missing; loss_weighted needs the inputs' evals "
                                   f"(`python -m workflow evaluate --model {model_id}`)") from None


def coefficients(params: Params, name: str) -> list[float]:
    """Unnormalised weights c_i of merge `name`'s inputs (the merge divides by their sum)."""
    merge, inputs = params.merges[name], params.merge_inputs(name)
    if merge.method == "uniform":
        return [1.0] * len(inputs)
    if merge.method == "weighted":
        return [float(w) for w in merge.weights]
    losses = [heldout_loss(m) for m in inputs]
    best = min(losses)
    return [math.exp(-(loss - best) / merge.temperature) for loss in losses]


def run(params: Params, name: str) -> None:
    """Average merge `name`'s inputs and write `artifacts/merge/<name>`."""
    if name not in params.merges:
        raise ValueError(f"unknown merge '{name}'; declared: {', '.join(params.merges) or 'none'}")
    merge, models = params.merges[name], params.merge_inputs(name)
    dirs = [paths.model_dir(m) for m in models]
    for model_id, d in zip(models, dirs):
        problem = ckpt.incomplete(d)
        if problem:
            raise ckpt.CheckpointError(f"merge '{name}' needs {model_id}: {problem}; build it first")
    coeffs = coefficients(params, name)
    total = sum(coeffs)
    backend, tokenizer = setup(params)
    model = build_model(params.model, backend, tokenizer.vocab_size)
    acc: dict[str, torch.Tensor] = {}
    inputs = []
    for model_id, d, c in zip(models, dirs, coeffs):
        ckpt.load(d, model)
        with torch.no_grad():
            for k, v in _weights(model).items():
                term = v.double().mul_(c)  # one tensor's temporary; product rounded, then summed
                if k in acc:
                    acc[k].add_(term)
                else:
                    acc[k] = term
        meta = ckpt.read_meta(d)
        inputs.append({"model": model_id, "fingerprint": meta["fingerprint"], "step": meta.get("step"),
                       "weight": c / total})
    with torch.no_grad():
        for k, v in _weights(model).items():
            v.copy_(acc.pop(k).div_(total).to(v.dtype))
    fingerprint = ckpt.digest({"method": merge.method, "inputs": [[i["fingerprint"], i["weight"]] for i in inputs]})
    model_id = f"merge-{name}"
    meta = {"model_id": model_id, "kind": "merge", "step": None, "consumed_samples": None, "tokens_seen": None,
            "lr": None, "fingerprint": fingerprint, "has_optimizer": False,
            "optimizer": "omitted: a merge holds averaged weights only",
            "format": {"checkpoint": ckpt.CKPT, "backend": "torch_dist"}, "vocab_size": tokenizer.vocab_size,
            "lineage": {"kind": "merge", "from": None, "method": merge.method, "inputs": inputs,
                        "temperature": merge.temperature}}
    with atomic_dir(paths.merge_dir(name)) as tmp:
        ckpt.save(tmp, model, None, {}, meta, [])
    print(f"{model_id}: {merge.method} average of " + ", ".join(f"{i['model']} ({i['weight']:.3f})" for i in inputs))
