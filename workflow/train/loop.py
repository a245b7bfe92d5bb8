"""The training loop shared by trunk and decay (nanoGPT-shaped).

One optimizer step `s` (1-based), always in this order:
  1. the scheduler moves to `s` and sets the LR used by this step (megatron `OptimizerParamScheduler`,
     counted in optimizer steps);
  2. the global batch = stream samples [position, position + global_batch_size), split into micro
     batches; loss = mean token cross entropy over the global batch, gradients accumulated;
  3. clip the global grad norm, AdamW step, log.

A `Session` owns everything a resumed run must restore bit-for-bit: model, optimizer, scheduler,
torch RNG, data stream + position, step and the cumulative train log.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from workflow import paths
from workflow.params import Params
from workflow.train import backend as be
from workflow.train import checkpoint as ckpt
from workflow.train.data import DataStream, TokenizerInfo, domain_weights
from workflow.train.model import build_model, token_losses

NEVER = 10**15  # trunk "decay length": the stable phase never reaches its anneal


def schedule(params: Params, branch: str | None = None) -> dict:
    """`OptimizerParamScheduler` arguments (units: optimizer steps).

    Trunk: linear warmup to `trunk.lr`, then WSD whose anneal starts at step 10**15 (never): constant.
    Decay: WSD whose anneal covers exactly the branch's steps after `from_step`, from the peak to
    `final_lr` with the chosen shape; no warmup (the branch starts at the peak).
    """
    t = params.trunk
    common = dict(init_lr=0.0, max_lr=t.lr, lr_decay_style="WSD", start_wd=t.weight_decay, end_wd=t.weight_decay,
                  wd_incr_steps=1, wd_incr_style="constant",
                  use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)
    if branch is None:
        return common | dict(min_lr=0.0, lr_warmup_steps=t.warmup_steps, lr_decay_steps=NEVER,
                             wsd_decay_steps=1, lr_wsd_decay_style="linear")
    d = params.decays[branch]
    if d.final_lr > t.lr:
        raise ValueError(f"decays.{branch}.final_lr ({d.final_lr}) is above the peak trunk.lr ({t.lr})")
    return common | dict(min_lr=d.final_lr, lr_warmup_steps=0, lr_decay_steps=d.from_step + d.steps,
                         wsd_decay_steps=d.steps, lr_wsd_decay_style=d.shape)


def setup(params: Params) -> tuple[be.Backend, TokenizerInfo]:
    """Backend, threads, process group and tokenizer facts: the common start of every stage."""
    be.set_threads()
    backend = be.resolve(params.model)
    be.init_distributed(backend, params.model.parallel.tp, params.model.parallel.pp)
    return backend, TokenizerInfo.load(params)


def is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class Session:
    """A model under training plus all state needed to continue it exactly."""

    def __init__(self, params: Params, branch: str | None = None) -> None:
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        self.params, self.branch = params, branch
        self.backend, self.tokenizer = setup(params)
        be.seed_everything(self.backend, params.trunk.seed)
        self.model = build_model(params.model, self.backend, self.tokenizer.vocab_size)
        t = params.trunk
        self.optimizer = be.make_optimizer(self.model, t.lr, t.weight_decay, (t.adam_beta1, t.adam_beta2), t.adam_eps)
        self.scheduler = OptimizerParamScheduler(self.optimizer, **schedule(params, branch))
        self.stream = DataStream(params, self.tokenizer, domain_weights(params, t.mixture))
        self.position = 0  # next stream sample
        self.step = 0
        self.log: list[dict] = []

    # --- state -----------------------------------------------------------------------------

    def state(self) -> dict:
        # megatron's scheduler state_dict omits the WSD fields; they are rebuilt from params on load
        scheduler = self.scheduler.state_dict() | {"wsd_decay_steps": self.scheduler.wsd_decay_steps,
                                                   "lr_wsd_decay_style": self.scheduler.lr_wsd_decay_style}
        return {"step": self.step, "scheduler": scheduler, "rng": be.rng_state(self.backend),
                "data": self.stream.state(self.position)}

    def restore(self, directory: str | Path, keep_log: bool = True) -> None:
        """Continue from a saved model dir (weights, optimizer, scheduler step, RNG, data position)."""
        state = ckpt.load(directory, self.model, self.optimizer)
        self.step = int(state["step"])
        self.scheduler.num_steps = 0
        self.scheduler.step(self.step)
        be.set_rng_state(self.backend, state["rng"])
        self.stream = DataStream.from_state(self.params, self.tokenizer, state["data"])
        self.position = int(state["data"]["position"])
        self.log = ckpt.read_log(directory) if keep_log else []

    def switch_stream(self, mixture: dict[str, float]) -> None:
        """Continue with new domain weights, every domain resuming where the current stream left it."""
        offsets = self.stream.domain_positions(self.position)
        self.stream = DataStream(self.params, self.tokenizer, domain_weights(self.params, mixture), offsets)
        self.position = 0

    @property
    def consumed_samples(self) -> int:
        return self.step * self.params.trunk.global_batch_size

    def meta(self, model_id: str, kind: str, fingerprint: str, lineage: dict) -> dict:
        return {"model_id": model_id, "kind": kind, "step": self.step, "consumed_samples": self.consumed_samples,
                "tokens_seen": self.consumed_samples * self.params.model.seq_length,
                "lr": self.log[-1]["lr"] if self.log else None, "fingerprint": fingerprint, "lineage": lineage,
                "has_optimizer": True, "format": {"checkpoint": ckpt.CKPT, "backend": "torch_dist"},
                "vocab_size": self.tokenizer.vocab_size, "data": self.stream.state(self.position)}

    def save(self, directory: str | Path, meta: dict) -> None:
        ckpt.save(directory, self.model, self.optimizer, self.state(), meta, self.log)

    # --- training --------------------------------------------------------------------------

    def train_step(self) -> dict:
        t = self.params.trunk
        start = time.perf_counter()
        self.model.train()
        self.scheduler.step(1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = t.global_batch_size * self.params.model.seq_length
        loss_sum = 0.0
        for m in range(0, t.global_batch_size, t.micro_batch_size):
            tokens, labels = self.stream.batch(self.position + m, t.micro_batch_size)
            losses = token_losses(self.model, self.backend, tokens.to(self.backend.device), labels.to(self.backend.device))
            loss = losses.sum() / total_tokens
            loss.backward()
            loss_sum += loss.item()
        grad_norm = clip_grads(self.model, t.grad_clip)
        self.optimizer.step()
        self.position += t.global_batch_size
        self.step += 1
        row = {"step": self.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": total_tokens / (time.perf_counter() - start), "consumed_samples": self.consumed_samples}
        self.log.append(row)
        return row

    def train_to(self, end_step: int, model_id: str, scratch: str | None = None,
                 meta: Callable[[], dict] | None = None) -> dict:
        """Train until `self.step == end_step`; every `save_interval` steps (not at the end) save a resume
        point to `scratch` (atomically). Returns a summary dict and prints a one-line summary."""
        from tqdm import tqdm

        from workflow.io import atomic_dir

        first, t0 = self.step, time.perf_counter()
        interval = self.params.trunk.save_interval
        bar = tqdm(total=end_step - first, desc=model_id, unit="step", disable=not is_main() or None,
                   dynamic_ncols=True, leave=False)
        row = None
        with bar:
            while self.step < end_step:
                row = self.train_step()
                bar.update(1)
                if self.step % self.params.trunk.log_interval == 0:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if scratch and self.step % interval == 0 and self.step < end_step:
                    with atomic_dir(scratch) as tmp:
                        self.save(tmp, meta())
        seconds = time.perf_counter() - t0
        steps = self.step - first
        tokens = steps * self.params.trunk.global_batch_size * self.params.model.seq_length
        summary = {"model": model_id, "steps": steps, "tokens": tokens, "seconds": seconds,
                   "loss": row["loss"] if row else None, "tokens_per_s": tokens / seconds if seconds else 0.0}
        if is_main():
            loss = f"{summary['loss']:.4f}" if row else "n/a"
            print(f"{model_id}: {steps} steps ({first}->{self.step}), {tokens:,} tokens in {seconds:.1f}s, "
                  f"final loss {loss}, {summary['tokens_per_s']:,.0f} tokens/s", flush=True)
        return summary


def clip_grads(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (tensor-parallel aware: TP-duplicated params counted once)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    counted = [p.grad.detach().float() for p in params if param_is_not_tensor_parallel_duplicate(p)]
    sq = torch.stack([g.pow(2).sum() for g in counted]).sum() if counted else torch.zeros(())
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(sq, group=parallel_state.get_tensor_model_parallel_group())
    norm = float(sq.sqrt())
    if math.isfinite(norm) and norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm


def remove_tree(path: str | Path) -> None:
    """Delete a directory and any parents it leaves empty (up to `artifacts/`)."""
    shutil.rmtree(path, ignore_errors=True)
    parent = Path(path).parent
    while parent != Path(paths.ARTIFACTS) and parent.name and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
