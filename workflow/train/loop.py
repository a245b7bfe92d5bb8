"""The training loop shared by trunk and decay (nanoGPT-shaped).

One optimizer step `s` (1-based), always in this order:
  1. the scheduler moves to `s` and sets the LR used by this step (megatron `OptimizerParamScheduler`,
     counted in optimizer steps);
  2. the global batch = stream samples [position, position + global_batch_size), each data-parallel
     replica taking a contiguous share, split into micro batches that megatron's schedule runs forward
     and backward (1F1B over the pipeline stages when pp > 1; one after the other otherwise); loss = mean
     token cross entropy over the global batch, gradients accumulated;
  3. reduce gradients, clip the global grad norm, AdamW step, log (the loss is computed on the last
     pipeline stage and sent to every rank).

A `Session` owns everything a resumed run must restore bit-for-bit: model, optimizer, scheduler,
torch RNG, data stream + position, step and the cumulative train log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from workflow import faults, mcore, paths
from workflow.params import Parallel, Params, for_run
from workflow.train import backend as be
from workflow.train import checkpoint as ckpt
from workflow.train import distributed
from workflow.train import optimizer as optim
from workflow.train.data import DataStream, TokenizerInfo, domain_weights
from workflow.train.distributed import is_main
from workflow.train.model import build_model, token_losses

NEVER = 10**15  # trunk "decay length": the stable phase never reaches its anneal
EXIT_STOPPED = 143  # 128 + SIGTERM: a job stopped on SIGTERM after saving; a scheduler's retry resumes it


class Stop:
    """SIGTERM (SLURM at a walltime or a preemption/requeue, then SIGKILL after KillWait) asks the run to
    stop: it ends the current step, saves a resume point and exits. `requested()` is the same on every rank
    (the signal may reach ranks during different steps): the ranks agree before any of them stops."""

    def __init__(self) -> None:
        self.flag = False

    @contextlib.contextmanager
    def installed(self) -> Iterator["Stop"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def requested(self) -> bool:
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            flag = torch.tensor([int(self.flag)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return self.flag


def stopped_line(step: int) -> str:
    """The job log's one line when a run stops on SIGTERM."""
    by = "SLURM" if os.environ.get("SLURM_JOB_ID") else "SIGTERM"
    return f"stopped by {by} at step {step}, saved; resume from {step}"


def schedule(params: Params, branch: str | None = None) -> dict:
    """`OptimizerParamScheduler` arguments (units: optimizer steps, counted from `schedule_origin`).

    Trunk: linear warmup to `trunk.lr`, then WSD whose anneal starts at step 10**15 (never): constant; a cosine or
    linear trunk (`trunk.schedule`) anneals from the end of the warmup to `final_lr_ratio` x lr at its last checkpoint.
    Decay (counted from its branch point): optional re-warm, megatron's linear warmup from 0 to the peak over
    `rewarm.steps`; then WSD whose anneal covers exactly the branch's decay steps, from the peak to its final
    LR with the chosen shape. Without re-warm the branch starts at the peak, where the trunk is.
    """
    t = params.trunk
    common = dict(init_lr=0.0, max_lr=t.lr, lr_decay_style="WSD", start_wd=t.weight_decay, end_wd=t.weight_decay,
                  wd_incr_steps=1, wd_incr_style="constant",
                  use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)
    if branch is None and t.schedule != "wsd":
        return common | dict(min_lr=t.final_lr_ratio * t.lr, lr_warmup_steps=t.warmup_steps,
                             lr_decay_steps=t.checkpoints[-1], lr_decay_style=t.schedule)
    if branch is None:
        return common | dict(min_lr=0.0, lr_warmup_steps=t.warmup_steps, lr_decay_steps=NEVER,
                             wsd_decay_steps=1, lr_wsd_decay_style="linear")
    d = params.decays[branch]
    return common | dict(max_lr=d.peak_lr(t), min_lr=d.min_lr(t), lr_warmup_steps=d.rewarm_steps,
                         lr_decay_steps=params.total_steps(branch), wsd_decay_steps=params.decay_steps(branch),
                         lr_wsd_decay_style=d.shape)


def schedule_origin(params: Params, branch: str | None = None) -> int:
    """The optimizer step at which the schedule's own count is 0: the trunk's start, or a branch point."""
    return 0 if branch is None else params.start_step(branch)


def setup(params: Params, parallel: Parallel | None = None) -> tuple[be.Backend, TokenizerInfo]:
    """Quiet megatron and import it (`mcore.load`), threads, backend, process group and tokenizer facts: the
    common start of every stage that builds a model. `parallel`: the training layout (`params.model.parallel`);
    None = one process, TP = PP = 1."""
    be.quiet_megatron()
    mcore.load()
    distributed.set_threads()
    backend = be.resolve(params.model)
    distributed.init(backend, parallel)
    return backend, TokenizerInfo.load(params)


class Session:
    """A model under training plus all state needed to continue it exactly."""

    def __init__(self, params: Params, branch: str | None = None) -> None:
        params = for_run(params, branch)  # a whole study: the branch's trunk, else its first
        self.params, self.branch = params, branch
        self.backend, self.tokenizer = setup(params, params.model.parallel)  # first: it quiets megatron's imports
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        distributed.seed_everything(self.backend, params.trunk.seed)
        gpt = build_model(params.model, self.backend, self.tokenizer.vocab_size)
        self.model = self.backend.wrap_for_training(gpt)
        self.optimizer = self.backend.optimizer(self.model, params, branch)
        self.scheduler = OptimizerParamScheduler(self.optimizer, **schedule(params, branch))
        self.stream = DataStream(params, self.tokenizer, domain_weights(params, params.trunk.mixture))
        self.position = 0  # next stream sample
        self.step = 0
        self.log: list[dict] = []

    # --- state -----------------------------------------------------------------------------

    def state(self) -> dict:
        # megatron's scheduler state_dict omits the WSD fields; they are rebuilt from params on load
        scheduler = self.scheduler.state_dict() | {"wsd_decay_steps": self.scheduler.wsd_decay_steps,
                                                   "lr_wsd_decay_style": self.scheduler.lr_wsd_decay_style}
        # fresh objects: pickle shares a string object it has seen (the optimizer's group keys are megatron's
        # literals in a fresh run, unpickled copies in a resumed one), so shared ones made resumed bytes differ
        fresh = json.loads(json.dumps({"scheduler": scheduler, "data": self.stream.state(self.position)}))
        return {"step": self.step, "scheduler": fresh["scheduler"], "rng": distributed.rng_state(self.backend),
                "data": fresh["data"]}

    def restore(self, directory: str | Path, keep_log: bool = True) -> None:
        """Continue from a saved model dir (weights, optimizer state, scheduler step, RNG, data position).
        The param groups keep this run's settings (its peak and final LR, weight decay), not the saved run's."""
        settings = optim.group_settings(self.optimizer)
        state = ckpt.load(directory, self.model, self.optimizer)
        optim.keep_settings(self.optimizer, settings)
        self.step = int(state["step"])
        self.scheduler.num_steps = 0
        self.scheduler.step(self.step - schedule_origin(self.params, self.branch))
        distributed.set_rng_state(self.backend, state["rng"])
        self.stream = DataStream.from_state(self.params, self.tokenizer, state["data"])
        self.position = int(state["data"]["position"])
        self.log = ckpt.read_log(directory) if keep_log else []

    def reset_optimizer(self) -> None:
        """Fresh optimizer state (zero AdamW moments, step count 0): a warm restart. The scheduler keeps its step."""
        self.optimizer = self.backend.optimizer(self.model, self.params, self.branch)
        self.scheduler.optimizer = self.optimizer
        self.scheduler.step(0)  # set the current LR on the new optimizer's groups

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
                "has_optimizer": True, "format": {"checkpoint": ckpt.CKPT, "backend": "torch_dist"}, "trained_on": self.backend.name,
                "vocab_size": self.tokenizer.vocab_size, "data": self.stream.state(self.position)}

    def save(self, directory: str | Path, meta: dict) -> None:
        """Write a complete model dir at `directory`, atomically (every rank writes its shards)."""
        with ckpt.atomic_save_dir(directory) as tmp:
            ckpt.save(tmp, self.model, self.optimizer, self.state(), meta, self.log)

    # --- training --------------------------------------------------------------------------

    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens, labels) of this data-parallel replica's micro batches of the current step. Every pipeline
        stage reads them (the first needs the tokens, the last the labels), all before the schedule starts:
        opening a new epoch of a domain is a collective (megatron's dataset builder synchronises all ranks),
        which must not happen while another stage waits for activations."""
        t, device = self.params.trunk, self.backend.device
        replica, replicas = distributed.data_parallel()
        share = t.global_batch_size // replicas
        batches = [self.stream.batch(self.position + m, t.micro_batch_size)
                   for m in range(replica * share, (replica + 1) * share, t.micro_batch_size)]
        return [(tokens.to(device), labels.to(device)) for tokens, labels in batches]

    def train_step(self) -> dict:
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.params.trunk
        start = time.perf_counter()
        self.model.train()
        self.scheduler.step(1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.backend.zero_grad(self.model, self.optimizer)
        total_tokens = t.global_batch_size * self.params.model.seq_length

        def loss_func(losses: torch.Tensor):  # (loss, tokens, logged): megatron's per-token-loss form
            loss = losses.sum() / total_tokens
            return loss, torch.tensor(losses.numel(), dtype=torch.int), loss.detach()

        def forward_step(batches, model):
            tokens, labels = next(batches)
            return token_losses(model, self.backend, tokens, labels), loss_func

        _, replicas = distributed.data_parallel()
        logged = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(self.micro_batches()), model=self.model,
            num_microbatches=t.global_batch_size // replicas // t.micro_batch_size,
            seq_length=self.params.model.seq_length, micro_batch_size=t.micro_batch_size)
        loss_sum = torch.stack(logged).sum() if logged else torch.zeros((), device=self.backend.device)
        self.backend.finish_grads(self.model)
        _, grad_norm, _ = self.optimizer.step()
        if replicas > 1:
            torch.distributed.all_reduce(loss_sum, group=distributed.data_parallel_group())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:  # only the last stage has it
            torch.distributed.all_reduce(loss_sum, group=parallel_state.get_pipeline_model_parallel_group())
        self.position += t.global_batch_size
        self.step += 1
        row = {"step": self.step, "loss": float(loss_sum), "lr": lr, "grad_norm": float(grad_norm),
               "consumed_samples": self.consumed_samples}
        self.log.append(row)  # saved in the model dir: only what the weights determine, so reruns write the same bytes
        return {**row, "tokens_per_s": total_tokens / (time.perf_counter() - start)}

    def train_to(self, end_step: int, model_id: str, scratch: str | None = None,
                 meta: Callable[[], dict] | None = None) -> dict:
        """Train until `self.step == end_step`; every `save_interval` steps (not at the end) save a resume
        point to `scratch` (atomically). On SIGTERM (`Stop`) finish the step, save a resume point there, say
        so in one line and exit EXIT_STOPPED. Returns a summary dict and prints a one-line summary."""
        from tqdm import tqdm

        first, t0 = self.step, time.perf_counter()
        interval, log_every = self.params.trunk.save_interval, self.params.trunk.log_interval
        tty = sys.stderr.isatty()
        bar = tqdm(total=end_step - first, desc=model_id, unit="step", disable=not (is_main() and tty),
                   dynamic_ncols=True, leave=False)
        row, stop = None, Stop()
        with bar, stop.installed():
            while self.step < end_step:
                row = self.train_step()
                faults.point("train.step")
                bar.update(1)
                if self.step % log_every == 0 or self.step == end_step:
                    if tty:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                        tok_s=f"{row['tokens_per_s']:,.0f}")
                    elif is_main():  # log files: one plain line, with the ETA
                        done, elapsed = self.step - first, time.perf_counter() - t0
                        eta = elapsed / done * (end_step - self.step)
                        print(f"{model_id} step {self.step}/{end_step} loss {row['loss']:.4f} lr {row['lr']:.3e} "
                              f"grad_norm {row['grad_norm']:.3f} {row['tokens_per_s']:,.0f} tokens/s "
                              f"eta {eta:,.0f}s", file=sys.stderr, flush=True)
                if scratch and self.step < end_step and stop.requested():
                    self.save(scratch, meta())
                    if is_main():
                        print(stopped_line(self.step), file=sys.stderr, flush=True)
                    raise SystemExit(EXIT_STOPPED)
                if scratch and self.step % interval == 0 and self.step < end_step:
                    self.save(scratch, meta())
                    faults.point("train.saved")
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


def remove_tree(path: str | Path) -> None:
    """Delete a directory and any parents it leaves empty (up to `artifacts/`)."""
    shutil.rmtree(path, ignore_errors=True)
    parent = Path(path).parent
    while parent != Path(paths.ARTIFACTS) and parent.name and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
