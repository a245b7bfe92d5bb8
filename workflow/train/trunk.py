"""Stable phase of the WSD schedule: a chain of checkpoints `artifacts/trunk/step-<N>`.

Two ways to run it (same results, bit for bit):
* `run(params, step=N)` (Snakemake, one job per segment): continue from `step-<prev>` (or from scratch
  for the first checkpoint), train to N, write `step-N`.
* `run(params, step=None)` (DVC, one stage owning `artifacts/trunk/`): produce every checkpoint in
  order, reusing complete ones whose fingerprint matches, retraining stale ones (from the last valid
  checkpoint before them), deleting unlisted ones.

Inside a segment a resume point is saved every `trunk.save_interval` steps under
`artifacts/.scratch/trunk/step-<N>`; a rerun after a crash (even SIGKILL) continues from it and ends
with the same weights as an uninterrupted run. A scratch save is used only if its fingerprint matches.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from workflow import paths
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train.loop import Session, is_main, remove_tree, setup

STEP_DIR = re.compile(r"^step-(\d+)$")
LEFTOVER = re.compile(r"\.(tmp|old)-\d+$")  # what a killed `atomic_dir` leaves behind


def previous(params: Params, step: int) -> int | None:
    """The checkpoint before `step` (None for the first)."""
    i = params.trunk.checkpoints.index(step)
    return params.trunk.checkpoints[i - 1] if i else None


def lineage(params: Params, step: int) -> dict:
    prev = previous(params, step)
    t = params.trunk
    return {"kind": "trunk", "from": f"trunk-{prev}" if prev else None, "step": step, "seed": t.seed, "lr": t.lr,
            "warmup_steps": t.warmup_steps, "mixture": t.mixture}


def say(message: str) -> None:
    if is_main():
        print(message, flush=True)


def run(params: Params, step: int | None = None) -> None:
    """Train one trunk segment (`step`), or the whole chain with reuse of valid checkpoints (`None`)."""
    if step is not None and step not in params.trunk.checkpoints:
        raise ValueError(f"trunk step {step} is not in trunk.checkpoints {list(params.trunk.checkpoints)}")
    setup(params, params.model.parallel)  # process group first: every rank sees the same plan
    fingerprint = ckpt.fingerprint(params)
    if step is None:
        _run_all(params, fingerprint)
        return
    prev = previous(params, step)
    if prev is not None:
        problem = ckpt.check(paths.trunk_dir(prev), fingerprint)
        if problem:
            raise ckpt.CheckpointError(f"cannot train trunk step {step}: previous checkpoint {problem}. "
                                       f"Train it first (`python -m workflow trunk --step {prev}`).")
    _segment(Session(params), params, step, fingerprint)


def _run_all(params: Params, fingerprint: str) -> None:
    root = Path(paths.trunk_root())
    listed = {f"step-{s}" for s in params.trunk.checkpoints}
    todo = [s for s in params.trunk.checkpoints if ckpt.check(paths.trunk_dir(s), fingerprint) is not None]
    _barrier()  # everyone has judged the checkpoints before rank 0 deletes any
    if is_main():
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            if entry.name not in listed and (STEP_DIR.match(entry.name) or LEFTOVER.search(entry.name)):
                print(f"trunk: removing {entry} (not in trunk.checkpoints)")
                remove_tree(entry)
        for step in params.trunk.checkpoints:
            if step not in todo:
                print(f"trunk-{step}: up to date (fingerprint matches), skipped")
            elif Path(paths.trunk_dir(step)).exists():
                print(f"trunk-{step}: retraining: {ckpt.check(paths.trunk_dir(step), fingerprint)}")
                remove_tree(paths.trunk_dir(step))
    _barrier()
    session = Session(params) if todo else None
    for step in todo:
        _segment(session, params, step, fingerprint)


def _segment(session: Session, params: Params, step: int, fingerprint: str) -> None:
    """Bring `session` to `step` (from scratch save, previous checkpoint or its current state) and save step-N."""
    prev = previous(params, step) or 0
    model_id = f"trunk-{step}"
    scratch = paths.scratch_dir("trunk", f"step-{step}")
    saved = ckpt.read_meta(scratch)["step"] if ckpt.check(scratch, fingerprint) is None else None
    if saved is not None and max(prev, session.step) < saved < step:
        say(f"{model_id}: resuming from {scratch} (step {saved})")
        session.restore(scratch)
    elif session.step != prev:
        session.restore(paths.trunk_dir(prev))
    meta = lambda: session.meta(model_id, "trunk", fingerprint, lineage(params, step))  # noqa: E731
    session.train_to(step, model_id, scratch, meta)
    session.save(paths.trunk_dir(step), meta())
    if is_main():
        for path in (scratch, paths.trunk_dir(step)):
            for leftover in Path(path).parent.glob(f"{Path(path).name}.*"):
                if LEFTOVER.search(leftover.name):  # from killed earlier attempts
                    remove_tree(leftover)
        remove_tree(scratch)
    _barrier()


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
