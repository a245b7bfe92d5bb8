"""Model directories: a megatron `dist_checkpointing` (torch_dist) checkpoint + `meta.json` + `train_log.jsonl`.

Layout of every model dir (`trunk/step-N`, `decay/<b>`, `merge/<m>`, and scratch saves)::

    checkpoint/       dist_checkpointing dir: model (+ optimizer) sharded tensors, common.pt
    meta.json         model_id, kind, step, consumed_samples, tokens_seen, lr, fingerprint, lineage, ...
    train_log.jsonl   one JSON object per optimizer step (loss, lr, grad_norm, tokens_per_s, consumed_samples)
    dvclive/          the same curves as a dvclive run (plots/metrics/<name>.tsv), declared as `dvc plots`

Non-tensor training state (scheduler, RNG, data stream, step) lives in `common.pt`. Megatron reads
`common.pt` (and sharded objects) with a bare `torch.load`, which is `weights_only=True` by default
since torch 2.6; `load()` refuses to run if `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` would switch that off,
so no checkpoint ever unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workflow import paths
from workflow.dag import TRUNK_LAYOUT_KEYS
from workflow.io import atomic_dir, read_json, write_json
from workflow.errors import StageError
from workflow.params import Params

CKPT = "checkpoint"
META = "meta.json"
LOG = "train_log.jsonl"
LIVE = "dvclive"
LIVE_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s")


class CheckpointError(StageError):
    """A checkpoint is missing, incomplete or was produced by different settings."""


# --- fingerprints ----------------------------------------------------------------------------

def _sha256_file(path: str) -> str:
    stat = os.stat(path)
    return _sha256_cached(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, _mtime_ns: int, _size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_inputs(params: Params, branch: str | None = None) -> dict:
    """Everything that determines a trunk's (or a decay branch's) weights: the architecture, the precision
    path actually used (cpu = fp32, gpu = bf16 + fp8 settings), the optimisation settings, the tokenizer
    and the token files' bytes. Not the process layout (`model.parallel`): megatron checkpoints reshard,
    so a run may continue at another TP size (same math, different float summation order)."""
    from workflow.train.backend import choose

    trunk = params.trunk.model_dump(mode="json", exclude=TRUNK_LAYOUT_KEYS)
    model = params.model.model_dump(mode="json", exclude={"parallel", "backend"}) | {"backend": choose(params.model)}
    data = {}
    for domain in params.domains():
        prefix = paths.tokens_prefix(domain)
        data[domain] = {"idx_sha256": _sha256_file(f"{prefix}.idx"), "bin_sha256": _sha256_file(f"{prefix}.bin")}
    inputs = {"model": model, "trunk": trunk, "tokenizer_sha256": _sha256_file(paths.tokenizer_file()), "tokens": data}
    if branch is not None:
        inputs["decay"] = params.decays[branch].model_dump(mode="json")
    return inputs


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fingerprint(params: Params, branch: str | None = None) -> str:
    return digest(fingerprint_inputs(params, branch))


# --- state dicts -----------------------------------------------------------------------------

def _sharded(model: torch.nn.Module, optimizer, is_loading: bool = False) -> dict:
    """Model (and optimizer: `CpuAdamW` or megatron's, same interface) as ShardedTensors keyed by parameter.
    Always the bare GPTModel's keys (without the GPU wrappers' `module.` prefixes), so every backend and
    evaluation reads every checkpoint."""
    from megatron.core.utils import unwrap_model

    model = unwrap_model(model)
    out = {"model": model.sharded_state_dict()}
    if optimizer is not None:
        out["optimizer"] = optimizer.sharded_state_dict(model.sharded_state_dict(), is_loading=is_loading)
    return out


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


# --- save / load -----------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_save_dir(path: str | Path) -> Iterator[Path]:
    """`workflow.io.atomic_dir` for every rank of a job: rank 0 owns the temp dir and the final rename,
    the others write their shards into the same temp dir; nothing appears at `path` until all are done."""
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_world_size() == 1:
        with atomic_dir(path) as tmp:
            yield tmp
        return
    if dist.get_rank() == 0:
        with atomic_dir(path) as tmp:
            dist.broadcast_object_list([str(tmp)], src=0)
            yield tmp
            dist.barrier()
    else:
        box: list = [None]
        dist.broadcast_object_list(box, src=0)
        yield Path(box[0])
        dist.barrier()
    dist.barrier()  # the rename is done before anyone reads `path`


def save(directory: str | Path, model: torch.nn.Module, optimizer, state: dict, meta: dict, log: list[dict]) -> None:
    """Write a complete model dir into `directory` (normally a temp dir from `atomic_save_dir`)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    directory = Path(directory)
    (directory / CKPT).mkdir(parents=True, exist_ok=True)
    _in_process_results_queue()
    sharded = _sharded(model, optimizer)
    sharded["state"] = state
    dist_checkpointing.save(sharded, str(directory / CKPT),
                            sharded_strategy=TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1))
    if _rank() != 0:
        return
    with open(directory / LOG, "w") as f:
        for row in log:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    if log:
        write_dvclive(directory / LIVE, log)
    write_json(directory / META, meta)  # last: its presence marks the dir complete


def _in_process_results_queue() -> None:
    """megatron's torch_dist writer hands its results back through a multiprocessing Manager queue that
    it spawns (a fresh interpreter importing torch: ~6 s measured under load) on a process's first save.
    Our saves are synchronous, so the results never leave this process: an in-process queue does."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def write_dvclive(directory: Path, log: list[dict]) -> None:
    """The per-step curves as a dvclive run (`plots/metrics/<name>.tsv`, x = step) for `dvc plots`."""
    from dvclive import Live

    with Live(str(directory), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for row in log:
            live.step = row["step"]
            for name in LIVE_METRICS:
                live.log_metric(name, row[name])


def load(directory: str | Path, model: torch.nn.Module, optimizer=None) -> dict:
    """Load weights (and optimizer state when given) into place; returns the saved non-tensor `state`."""
    from megatron.core import dist_checkpointing
    from megatron.core.utils import unwrap_model

    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in ("1", "true", "yes"):
        raise CheckpointError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: refusing to unpickle checkpoint objects")
    directory = Path(directory)
    problem = incomplete(directory)
    if problem:
        raise CheckpointError(problem)
    if optimizer is not None and not read_meta(directory).get("has_optimizer", False):
        raise CheckpointError(f"{directory}: has no optimizer state (a merge?); it cannot be trained from")
    loaded = dist_checkpointing.load(_sharded(model, optimizer, is_loading=True), str(directory / CKPT))
    unwrap_model(model).load_state_dict(loaded["model"])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
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
