"""Model directories: a megatron `dist_checkpointing` (torch_dist) checkpoint + `meta.json` + `train_log.jsonl`.

Layout of every model dir (`trunk/step-N`, `decay/<b>`, `merge/<m>`, and scratch saves)::

    checkpoint/       dist_checkpointing dir: model (+ optimizer) sharded tensors, common.pt
    meta.json         model_id, kind, step, consumed_samples, tokens_seen, lr, fingerprint, lineage, ...
    train_log.jsonl   one JSON object per optimizer step

Non-tensor training state (scheduler, RNG, data stream, step) lives in `common.pt`. Megatron reads
`common.pt` (and sharded objects) with a bare `torch.load`, which is `weights_only=True` by default
since torch 2.6; `load()` refuses to run if `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` would switch that off,
so no checkpoint ever unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from workflow import paths
from workflow.io import read_json, write_json
from workflow.params import Params

CKPT = "checkpoint"
META = "meta.json"
LOG = "train_log.jsonl"
TRUNK_KEYS_IGNORED = {"checkpoints", "save_interval", "log_interval"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or was produced by different settings."""


# --- fingerprints ----------------------------------------------------------------------------

def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_inputs(params: Params, branch: str | None = None) -> dict:
    """Everything that determines a trunk's (or a decay branch's) weights."""
    trunk = params.trunk.model_dump(mode="json", exclude=TRUNK_KEYS_IGNORED)
    data = {}
    for domain in params.domains():
        prefix = paths.tokens_prefix(domain)
        data[domain] = {"idx_sha256": _sha256_file(f"{prefix}.idx"), "bin_bytes": os.path.getsize(f"{prefix}.bin")}
    inputs = {"model": params.model.model_dump(mode="json"), "trunk": trunk,
              "tokenizer_sha256": _sha256_file(paths.tokenizer_file()), "tokens": data}
    if branch is not None:
        inputs["decay"] = params.decays[branch].model_dump(mode="json")
    return inputs


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fingerprint(params: Params, branch: str | None = None) -> str:
    return digest(fingerprint_inputs(params, branch))


# --- state dicts -----------------------------------------------------------------------------

def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter empty AdamW state so loading has buffers of the right shape to fill."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                      "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}


def _optimizer_sharded(optimizer: torch.optim.Optimizer, model_sharded: dict) -> dict:
    """AdamW state as ShardedTensors keyed like the model's parameters (reshardable across TP)."""
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map, optim_state_to_sharding_state)

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = optimizer.state_dict()
    steps = {float(s["step"]) for s in state["state"].values()}
    assert len(steps) <= 1, f"parameters are at different optimizer steps: {steps}"
    id_map = get_param_id_to_sharded_param_map(model_sharded, params)
    optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
    state["common_step"] = steps.pop() if steps else 0.0
    return state


def _restore_optimizer(optimizer: torch.optim.Optimizer, loaded: dict) -> None:
    step = loaded.pop("common_step")
    for param_state in loaded["state"].values():
        param_state["step"] = torch.tensor(step, dtype=torch.float32)
    optimizer.load_state_dict(loaded)


def _sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    model_sharded = model.sharded_state_dict()
    out = {"model": model_sharded}
    if optimizer is not None:
        out["optimizer"] = _optimizer_sharded(optimizer, model.sharded_state_dict())
    return out


# --- save / load -----------------------------------------------------------------------------

def save(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
         state: dict, meta: dict, log: list[dict]) -> None:
    """Write a complete model dir into `directory` (normally the temp dir of `workflow.io.atomic_dir`)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    directory = Path(directory)
    (directory / CKPT).mkdir(parents=True, exist_ok=True)
    sharded = _sharded(model, optimizer)
    sharded["state"] = state
    dist_checkpointing.save(sharded, str(directory / CKPT),
                            sharded_strategy=TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1))
    with open(directory / LOG, "w") as f:
        for row in log:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    write_json(directory / META, meta)  # last: its presence marks the dir complete


def load(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load weights (and optimizer state when given) into place; returns the saved non-tensor `state`."""
    from megatron.core import dist_checkpointing

    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in ("1", "true", "yes"):
        raise CheckpointError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: refusing to unpickle checkpoint objects")
    directory = Path(directory)
    problem = incomplete(directory)
    if problem:
        raise CheckpointError(problem)
    if optimizer is not None:
        if not read_meta(directory).get("has_optimizer", False):
            raise CheckpointError(f"{directory}: has no optimizer state (a merge?); it cannot be trained from")
        _init_optimizer_state(optimizer)
    loaded = dist_checkpointing.load(_sharded(model, optimizer), str(directory / CKPT))
    model.load_state_dict(loaded["model"])
    if optimizer is not None:
        _restore_optimizer(optimizer, loaded["optimizer"])
    return loaded.get("state", {})


def read_meta(directory: str | Path) -> dict:
    return read_json(Path(directory) / META)


def read_log(directory: str | Path) -> list[dict]:
    path = Path(directory) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def incomplete(directory: str | Path) -> str | None:
    """Why `directory` is not a complete model dir, or None when it is."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory}: does not exist"
    for name in (META, LOG, f"{CKPT}/metadata.json", f"{CKPT}/.metadata", f"{CKPT}/common.pt"):
        if not (directory / name).exists():
            return f"{directory}: incomplete (missing {name})"
    try:
        meta = read_meta(directory)
    except (OSError, ValueError) as err:
        return f"{directory}: unreadable {META} ({err})"
    if "fingerprint" not in meta:
        return f"{directory}: {META} has no fingerprint"
    return None


def check(directory: str | Path, expected_fingerprint: str) -> str | None:
    """Why `directory` cannot be reused/continued (incomplete or stale), or None when it matches."""
    problem = incomplete(directory)
    if problem:
        return problem
    got = read_meta(directory)["fingerprint"]
    if got != expected_fingerprint:
        return (f"{directory}: fingerprint {got[:12]} does not match the current settings/inputs "
                f"({expected_fingerprint[:12]}): it was trained with different params, tokenizer or token files")
    return None
