"""Stable phase of the WSD schedule: a chain of checkpoints `artifacts/trunk/step-<N>`.

Two ways to run it (same results, bit for bit):
* `run(params, step=N)` (Snakemake, one job per segment): continue from the checkpoint before N
  (`start_checkpoint`; from scratch for the first), train to N, write `step-N`.
* `run(params, step=None)` (DVC, one stage owning `artifacts/trunk/`): produce every checkpoint in
  order, reusing complete ones whose fingerprint matches, retraining stale ones (from the last valid
  checkpoint before them), deleting unlisted ones.

Each segment goes through the shared runner (`segment.py`): resume points every `trunk.save_interval`
steps under `artifacts/.scratch/trunk/step-<N>` (a rerun after a crash, even SIGKILL, continues from one
and ends with the same weights as an uninterrupted run), and the preflight check before its first step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from workflow import paths
from workflow.io import remove_stale_temporaries
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train import segment as runner
from workflow.train.distributed import barrier, is_main
from workflow.train.loop import Session, remove_tree, setup

STEP_DIR = re.compile(r"^step-(\d+)(?:$|\.)")  # a checkpoint dir, or a writer's temporary of one


def previous(params: Params, step: int) -> int | None:
    """The checkpoint before `step` (None for the first)."""
    i = params.trunk.checkpoints.index(step)
    return params.trunk.checkpoints[i - 1] if i else None


def start_checkpoint(params: Params, step: int) -> str | None:
    """The model dir trunk segment `step` continues (None: it starts from scratch)."""
    prev = previous(params, step)
    return paths.trunk_dir(prev) if prev is not None else None


def lineage(params: Params, step: int) -> dict:
    prev = previous(params, step)
    t = params.trunk
    return {"kind": "trunk", "from": f"trunk-{prev}" if prev else None, "step": step, "seed": t.seed, "lr": t.lr,
            "warmup_steps": t.warmup_steps, "mixture": t.mixture}


def segment(params: Params, step: int, fingerprint: str) -> runner.Segment:
    return runner.Segment(model_id=f"trunk-{step}", kind="trunk", end_step=step,
                          parent=start_checkpoint(params, step), out=paths.trunk_dir(step),
                          scratch=paths.scratch_dir("trunk", f"step-{step}"), fingerprint=fingerprint,
                          lineage=lineage(params, step))


def run(params: Params, step: int | None = None) -> None:
    """Train one trunk segment (`step`), or the whole chain with reuse of valid checkpoints (`None`)."""
    if step is not None and step not in params.trunk.checkpoints:
        raise ValueError(f"trunk step {step} is not in trunk.checkpoints {list(params.trunk.checkpoints)}")
    setup(params, params.model.parallel)  # process group first: every rank sees the same plan
    fingerprint = ckpt.fingerprint(params)
    if step is None:
        _run_all(params, fingerprint)
        return
    parent = start_checkpoint(params, step)
    if parent is not None:
        problem = ckpt.check(parent, fingerprint)
        if problem:
            raise ckpt.CheckpointError(f"cannot train trunk step {step}: previous checkpoint {problem}. "
                                       f"Train it first (`python -m workflow trunk --step {previous(params, step)}`).")
    runner.run(params, Session(params), segment(params, step, fingerprint))


def _run_all(params: Params, fingerprint: str) -> None:
    root = Path(paths.trunk_root())
    listed = set(params.trunk.checkpoints)
    todo = [s for s in params.trunk.checkpoints if ckpt.check(paths.trunk_dir(s), fingerprint) is not None]
    barrier()  # everyone has judged the checkpoints before rank 0 deletes any
    if is_main():
        found = {int(m[1]) for m in map(STEP_DIR.match, os.listdir(root) if root.is_dir() else []) if m}
        for step in sorted(found):
            remove_stale_temporaries(paths.trunk_dir(step))  # what killed writers left (never a live one's)
            if step not in listed and Path(paths.trunk_dir(step)).exists():
                print(f"trunk: removing {paths.trunk_dir(step)} (not in trunk.checkpoints)")
                remove_tree(paths.trunk_dir(step))
        for step in params.trunk.checkpoints:
            if step not in todo:
                print(f"trunk-{step}: up to date (fingerprint matches), skipped")
            elif Path(paths.trunk_dir(step)).exists():
                print(f"trunk-{step}: retraining: {ckpt.check(paths.trunk_dir(step), fingerprint)}")
                remove_tree(paths.trunk_dir(step))
    barrier()
    session = Session(params) if todo else None
    for step in todo:
        runner.run(params, session, segment(params, step, fingerprint))
