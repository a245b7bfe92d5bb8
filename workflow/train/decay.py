"""Decay branches: anneal the LR from the peak to `final_lr` starting at a trunk checkpoint.

The branch continues the trunk's optimizer state and data stream (or, with its own `mixture`, every
domain from where the trunk left it). Steps keep the trunk's absolute numbering:
`from_step + 1 .. from_step + steps`.
"""

from __future__ import annotations

from workflow import paths
from workflow.io import atomic_dir
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train.loop import Session, remove_tree


def lineage(params: Params, branch: str) -> dict:
    d = params.decays[branch]
    return {"kind": "decay", "from": f"trunk-{d.from_step}", "branch": branch, "from_step": d.from_step,
            "steps": d.steps, "shape": d.shape, "final_lr": d.final_lr, "mixture": d.mixture}


def run(params: Params, branch: str) -> None:
    """Train decay branch `branch` and write `artifacts/decay/<branch>`."""
    if branch not in params.decays:
        raise ValueError(f"unknown decay branch '{branch}'; declared: {', '.join(params.decays) or 'none'}")
    d = params.decays[branch]
    source = paths.trunk_dir(d.from_step)
    problem = ckpt.check(source, ckpt.fingerprint(params))
    if problem:
        raise ckpt.CheckpointError(f"cannot train decay '{branch}': trunk checkpoint {problem}. "
                                   f"Train it first (`python -m workflow trunk --step {d.from_step}`).")
    fingerprint = ckpt.fingerprint(params, branch)
    model_id, end = f"decay-{branch}", d.from_step + d.steps
    session = Session(params, branch)
    scratch = paths.scratch_dir("decay", branch)
    if ckpt.check(scratch, fingerprint) is None and d.from_step < ckpt.read_meta(scratch)["step"] < end:
        print(f"{model_id}: resuming from {scratch} (step {ckpt.read_meta(scratch)['step']})")
        session.restore(scratch)
    else:
        session.restore(source, keep_log=False)
        if d.mixture is not None:
            session.switch_stream(d.mixture)
    meta = lambda: session.meta(model_id, "decay", fingerprint, lineage(params, branch))  # noqa: E731
    session.train_to(end, model_id, scratch, meta)
    with atomic_dir(paths.decay_dir(branch)) as tmp:
        session.save(tmp, meta())
    remove_tree(scratch)
