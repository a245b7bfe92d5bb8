"""Model directories: a megatron `dist_checkpointing` (torch_dist) checkpoint + `meta.json` + `train_log.jsonl`.

Layout of every model dir (`trunk/step-N`, `decay/<b>`, `merge/<m>`, and scratch saves)::

    checkpoint/       dist_checkpointing dir: model (+ optimizer) sharded tensors, common.pt
    meta.json         model_id, kind, step, consumed_samples, tokens_seen, lr, fingerprint, lineage, ...
    train_log.jsonl   one JSON object per optimizer step (loss, lr, grad_norm, consumed_samples; throughput,
                      a wall-clock figure, goes to the job's log instead: a rerun must write the same bytes)
    dvclive/          the same curves as a dvclive run (plots/metrics/<name>.tsv), declared as `dvc plots`

`meta.json` is written last and lists every other file's size and SHA-256 (`files`); `incomplete()` (so
`check()`, `load()`, merge, evaluate and export) rejects a dir whose files do not match, naming the file.

Loading never runs pickled code. Four pickles are read on load (torch 2.13, megatron-core 0.16.1, TE):
* `common.pt` (scheduler, RNG, data stream, step) by megatron's bare `torch.load`: `weights_only=True`, the
  default since torch 2.6; `load()` refuses to run when `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` switches it off;
* `checkpoint/.metadata` (torch DCP's index of the shards) by DCP's plain `pickle.load`;
* sharded objects (the layers' `_extra_state`) by DCP's `torch.load(weights_only=False)`;
* on the TE layer spec, the bytes of each `_extra_state` uint8 tensor, by TE's `set_extra_state` (`pickle.loads`).
Before megatron reads anything, `load()` unpickles `.metadata` with an allowlist of DCP's metadata types,
every sharded object with `weights_only=True`, and each `_extra_state` payload with an allowlist of what TE
writes there (`safe_pickles`, `te_state`): a checkpoint that would build anything else is refused, so the
permissive reads that follow only ever see data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workflow import faults, integrity, paths
from workflow.io import atomic_dir, read_json, write_json
from workflow.errors import StageError
from workflow.params import TRUNK_LAYOUT, Params, ParamsError, parse_model_id
from workflow.train import te_state

CKPT = "checkpoint"
META = "meta.json"
LOG = "train_log.jsonl"
LIVE = "dvclive"
LIVE_METRICS = ("loss", "lr", "grad_norm")


class CheckpointError(StageError):
    """A checkpoint is missing, incomplete or was produced by different settings."""


# --- fingerprints ----------------------------------------------------------------------------

def fingerprint_inputs(params: Params, branch: str | None = None) -> dict:
    """Everything that determines a trunk's (or a decay branch's) weights: the architecture, the precision
    path actually used (cpu = fp32, gpu = bf16 + fp8 settings), the optimisation settings, the tokenizer,
    the token files' bytes and those of the Hugging Face checkpoint it starts from (`trunk.from_hf`). Not the
    process layout (`model.parallel`): megatron checkpoints reshard, so a run may continue at another TP size
    (same math, different float summation order)."""
    from workflow.train.backend import choose
    from workflow.train.data import verify_tokens

    trunk = params.trunk.model_dump(mode="json", exclude=set(TRUNK_LAYOUT) | {"model"})
    if params.trunk.schedule != "wsd":  # a fixed horizon: every checkpoint lies on a schedule ending at the last
        trunk["horizon"] = params.trunk.checkpoints[-1]
    model = params.model.model_dump(mode="json", exclude={"parallel", "backend"}) | {"backend": choose(params.model)}
    data = {}
    for domain in params.domains():
        verify_tokens(params, domain)  # corrupt token files are an error, not new inputs (that would retrain)
        prefix = paths.tokens_prefix(domain, data=params.trunk.data)
        data[domain] = {"idx_sha256": integrity.sha256(f"{prefix}.idx"),
                        "bin_sha256": integrity.sha256(f"{prefix}.bin")}
    inputs = {"model": model, "trunk": trunk, "tokenizer_sha256": integrity.sha256(paths.tokenizer_file()),
              "tokens": data}
    if params.trunk.from_hf:  # the weights it started from: replaced files retrain the trunk, in DVC's chain too
        from workflow import hf

        inputs["from_hf"] = hf.digest(params.trunk.from_hf)
    if branch is not None:
        inputs["decay"] = params.decays[branch].model_dump(mode="json")
        parent = params.decays[branch].parent
        if parent.startswith("decay-"):  # a branch of a decay: the parent's own settings, down to the trunk
            inputs["parent"] = fingerprint_inputs(params, parent[6:])["decay"]
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
    faults.point("checkpoint.shard")
    if _rank() != 0:
        return
    _drop_run_ids(directory / CKPT)
    with open(directory / LOG, "w") as f:
        for row in log:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    if log:
        write_dvclive(directory / LIVE, log)
    files = integrity.manifest(directory, exclude=[META])  # every rank's shards are written by now
    write_json(directory / META, {**meta, integrity.FILES: files})  # last: its presence marks the dir complete


def _drop_run_ids(checkpoint: Path) -> None:
    """torch DCP's `.metadata` records where and when it was written (`storage_meta`: the temp dir, so the pid,
    and a random save id); readers default it when absent. Dropped, so a rerun (or a resumed run) writes the
    same bytes as the first run and DVC sees the same checkpoint."""
    path = checkpoint / ".metadata"
    with open(path, "rb") as f:
        metadata = _MetadataUnpickler(f).load()
    metadata.storage_meta = None
    with open(path, "wb") as f:
        pickle.dump(metadata, f)


def _in_process_results_queue() -> None:
    """megatron's torch_dist writer hands its results back through a multiprocessing Manager queue that
    it spawns (a fresh interpreter importing torch: ~6 s measured under load) on a process's first save.
    Our saves are synchronous, so the results never leave this process: an in-process queue does."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def write_dvclive(directory: Path, log: list[dict]) -> None:
    """The per-step curves in a dvclive run's files (`plots/metrics/<name>.tsv`, x = step, and `metrics.json`, the
    last values) for `dvc plots`. Written here, byte for byte as `dvclive.Live` writes them (tests/unit/test_train.py):
    `Live` opens the DVC repository first (and `dvc init`s one where there is none), 1.8 s of every training job."""
    plots = directory / "plots" / "metrics"
    plots.mkdir(parents=True)
    for name in LIVE_METRICS:
        rows = [f"step\t{name}\n", *(f"{row['step']}\t{row[name]}\n" for row in log)]
        (plots / f"{name}.tsv").write_text("".join(rows))
    last = {name: log[-1][name] for name in LIVE_METRICS} | {"step": log[-1]["step"]}
    (directory / "metrics.json").write_text(json.dumps(last, indent=4) + "\n")


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
    safe_pickles(directory / CKPT)
    with te_state.checked_payloads_loadable():  # TE's set_extra_state runs in load_state_dict
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
    files = integrity.recorded(meta, directory, _rerun(meta))
    if files is not None:
        problem = integrity.problem(files, directory)
        if problem:
            return f"{problem}; rerun `python -m workflow {_rerun(meta)}`"
    return None


def _rerun(meta: dict) -> str:
    """The command that writes this model dir again."""
    try:
        return rerun_hint(str(meta.get("model_id")))
    except ParamsError:
        return "trunk/decay/merge (the stage that wrote it)"


def rerun_hint(model_id: str) -> str:
    """`python -m workflow` arguments that write one model again."""
    kind, key = parse_model_id(model_id)
    return {"decay": f"decay --branch {key}", "merge": f"merge --name {key}"}.get(kind, f"trunk --trunk {kind} --step {key}")


# --- pickles -----------------------------------------------------------------------------------

# What torch DCP pickles into `.metadata` (torch 2.13): its metadata dataclasses, torch.Size, dtypes, layouts.
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.planner": {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData",
                                             "BytesIOWriteData"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # name -> one of torch's layouts
    "torch": {"Size"} | {name for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name not in _DCP_GLOBALS.get(module, ()):
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not torch DCP metadata")
        return super().find_class(module, name)


def safe_pickles(checkpoint: Path) -> None:
    """Raise CheckpointError unless every pickle that loading a torch_dist dir reads (`common.pt`, `.metadata`,
    each sharded object) unpickles to plain data; the module docstring says why."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    path = checkpoint / ".metadata"
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as err:  # any failure is a refusal: never retried with a permissive unpickler
        raise CheckpointError(f"{path}: refusing to unpickle ({err})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not torch DCP metadata")
    _weights_only(checkpoint / "common.pt", checkpoint / "common.pt")
    for index, info in (metadata.storage_data or {}).items():
        if isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            where = f"{checkpoint / info.relative_path} (object '{index.fqn}')"
            if info.transform_descriptors:
                raise CheckpointError(f"{where}: stored with transforms {info.transform_descriptors}; not supported")
            with open(checkpoint / info.relative_path, "rb") as f:
                f.seek(info.offset)
                obj = _weights_only(io.BytesIO(f.read(info.length)), where)
            for extra in te_state.payloads(obj) if "_extra_state" in index.fqn else ():
                try:
                    te_state.check(extra)
                except te_state.ForgedExtraState as err:
                    raise CheckpointError(f"{where}: refusing its Transformer Engine extra state ({err})") from None


def _weights_only(source, where):
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        lines = str(err).splitlines()
        reason = next((line.strip() for line in lines if "Unsupported" in line), lines[0] if lines else repr(err))
        raise CheckpointError(f"{where}: refusing to unpickle ({reason})") from None


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
