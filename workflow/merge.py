"""Weight averaging: `artifacts/merge/<name>` = element-wise uniform mean of the models' weights.

Streaming through the model's own sharded state dict: one float64 accumulator plus the one input
loaded into the model at a time. The result is a regular model dir (megatron checkpoint with the
model's `_extra_state` objects intact, so evaluate and later merges load it like any other) without
optimizer state (`meta.json`: `has_optimizer: false`); a merge cannot be trained further.
"""

from __future__ import annotations

import torch

from workflow import paths
from workflow.io import atomic_dir
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train.loop import setup
from workflow.train.model import build_model


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not k.endswith("_extra_state")}


def run(params: Params, name: str) -> None:
    """Average `merges[name].models` and write `artifacts/merge/<name>`."""
    if name not in params.merges:
        raise ValueError(f"unknown merge '{name}'; declared: {', '.join(params.merges) or 'none'}")
    merge = params.merges[name]
    dirs = [paths.model_dir(m) for m in merge.models]
    for model_id, d in zip(merge.models, dirs):
        problem = ckpt.incomplete(d)
        if problem:
            raise ckpt.CheckpointError(f"merge '{name}' needs {model_id}: {problem}; build it first")
    backend, tokenizer = setup(params)
    model = build_model(params.model, backend, tokenizer.vocab_size)
    acc: dict[str, torch.Tensor] = {}
    inputs = []
    for model_id, d in zip(merge.models, dirs):
        ckpt.load(d, model)
        for k, v in _weights(model).items():
            if k in acc:
                acc[k] += v.double()
            else:
                acc[k] = v.double().clone()
        meta = ckpt.read_meta(d)
        inputs.append({"model": model_id, "fingerprint": meta["fingerprint"], "step": meta.get("step")})
    with torch.no_grad():
        for k, v in _weights(model).items():
            v.copy_((acc.pop(k) / len(dirs)).to(v.dtype))
    fingerprint = ckpt.digest({"method": merge.method, "inputs": [i["fingerprint"] for i in inputs]})
    model_id = f"merge-{name}"
    meta = {"model_id": model_id, "kind": "merge", "step": None, "consumed_samples": None, "tokens_seen": None,
            "lr": None, "fingerprint": fingerprint, "has_optimizer": False,
            "optimizer": "omitted: a merge holds averaged weights only",
            "format": {"checkpoint": ckpt.CKPT, "backend": "torch_dist"}, "vocab_size": tokenizer.vocab_size,
            "lineage": {"kind": "merge", "from": None, "method": merge.method, "inputs": inputs}}
    with atomic_dir(paths.merge_dir(name)) as tmp:
        ckpt.save(tmp, model, None, {}, meta, [])
    print(f"{model_id}: {merge.method} average of {', '.join(merge.models)}")
