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
from pathlib import Path
from typing import TYPE_CHECKING

from workflow import faults, paths
from workflow.io import atomic_dir, read_json
from workflow.params import Params, scoped

if TYPE_CHECKING:
    import torch


def _weights(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    import torch

    return {k: v for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not k.endswith("_extra_state")}


def heldout_loss(path: str) -> float:
    """Pooled held-out loss of a model from its eval file (its evaluate output); what `loss_weighted` weighs by."""
    from workflow.train import checkpoint as ckpt

    try:
        return float(read_json(path)["heldout"]["all"]["loss"])
    except FileNotFoundError:
        model_id = Path(path).stem
        raise ckpt.CheckpointError(f"{path}: missing; loss_weighted needs the inputs' evals "
                                   f"(`python -m workflow evaluate --model {model_id}`)") from None


def coefficients(params: Params, name: str, evals: list[str], n: int) -> list[float]:
    """Unnormalised weights c_i of merge `name`'s `n` inputs (the merge divides by their sum)."""
    merge = params.merges[name]
    if merge.method == "uniform":
        return [1.0] * n
    if merge.method == "weighted":
        return [float(w) for w in merge.weights]
    losses = [heldout_loss(e) for e in evals]
    best = min(losses)
    return [math.exp(-(loss - best) / merge.temperature) for loss in losses]


def run(params: Params, name: str, *, inputs: dict[str, list[str]]) -> None:
    """Average the models `inputs["models"]` (weighted by `inputs["evals"]` for loss_weighted); write
    `artifacts/merge/<name>`."""
    import torch

    from workflow.train import checkpoint as ckpt
    from workflow.train.loop import setup
    from workflow.train.model import build_model

    params = scoped(params, f"merge-{name}")
    merge, dirs = params.merges[name], inputs["models"]
    models = []
    for d in dirs:
        problem = ckpt.incomplete(d)
        if problem:
            raise ckpt.CheckpointError(f"merge '{name}': input {problem}; build it first")
        models.append(ckpt.read_meta(d)["model_id"])
    coeffs = coefficients(params, name, inputs["evals"], len(dirs))
    total = sum(coeffs)
    backend, tokenizer = setup(params)
    model = build_model(params.model, backend, tokenizer.vocab_size)
    acc: dict[str, torch.Tensor] = {}
    averaged = []
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
        averaged.append({"model": model_id, "fingerprint": meta["fingerprint"], "step": meta.get("step"),
                         "weight": c / total})
        faults.point("merge.input")
    with torch.no_grad():
        for k, v in _weights(model).items():
            v.copy_(acc.pop(k).div_(total).to(v.dtype))
    fingerprint = ckpt.digest({"method": merge.method, "inputs": [[i["fingerprint"], i["weight"]] for i in averaged]})
    model_id = f"merge-{name}"
    meta = {"model_id": model_id, "kind": "merge", "step": None, "consumed_samples": None, "tokens_seen": None,
            "lr": None, "fingerprint": fingerprint, "has_optimizer": False,
            "optimizer": "omitted: a merge holds averaged weights only",
            "format": {"checkpoint": ckpt.CKPT, "backend": "torch_dist"}, "vocab_size": tokenizer.vocab_size,
            "lineage": {"kind": "merge", "from": None, "method": merge.method, "inputs": averaged,
                        "weights": merge.weights, "temperature": merge.temperature}}
    with atomic_dir(paths.merge_dir(name)) as tmp:
        ckpt.save(tmp, model, None, {}, meta, [])
    print(f"{model_id}: {merge.method} average of " + ", ".join(f"{i['model']} ({i['weight']:.3f})" for i in averaged))
