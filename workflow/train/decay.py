"""Decay branches: from a trunk checkpoint, (optionally re-warm, then) anneal the LR to its final value.

The branch continues the trunk checkpoint's weights, AdamW state (unless `rewarm.reset_optimizer`),
RNG and data stream. Steps keep the trunk's absolute numbering, `from_step + 1 .. end_step`; the LR
schedule counts from the branch point (`loop.schedule`).

Data: without a `mixture` the branch reads the trunk's stream from the trunk's position on, i.e. exactly
the samples the trunk would have read next. With its own `mixture`, a new blend (megatron's blending
indices over the new weights) draws from every domain starting at that domain's position in the trunk's
stream (`DataStream.domain_positions`): each domain's sequence of samples is the trunk's, continued, so
an upsampled domain shows its next unseen samples and no trunk sample is shown again (until a domain's
epoch runs out: the next epoch is a fresh shuffle, as it would be for the trunk).

Why a branch cannot start from a merge: a merge is an average of weights only. It has no AdamW moments
(a branch would restart them from zero, i.e. a warm restart that needs a re-warm) and no single data
position (its inputs stopped at different points of possibly different streams). Both have reasonable
answers (fresh optimizer; per-domain maximum of the inputs' positions) but change what a decay *is* (a
continuation of one trunk run), so the schema only accepts `from_step`.
"""

from __future__ import annotations

from pathlib import Path

from workflow import paths
from workflow.params import Params
from workflow.train.trunk import LEFTOVER


def lineage(params: Params, branch: str) -> dict:
    d, t = params.decays[branch], params.trunk
    return {"kind": "decay", "from": f"trunk-{d.from_step}", "branch": branch, "from_step": d.from_step,
            "steps": d.decay_steps, "rewarm_steps": d.rewarm_steps, "shape": d.shape, "peak_lr": d.peak_lr(t),
            "final_lr": d.min_lr(t), "mixture": d.mixture,
            "reset_optimizer": bool(d.rewarm and d.rewarm.reset_optimizer)}


def run(params: Params, branch: str, *, inputs: dict[str, list[str]]) -> None:
    """Train decay branch `branch` from its parent checkpoint `inputs["parent"]`; write `artifacts/decay/<branch>`."""
    from workflow.train import checkpoint as ckpt
    from workflow.train.loop import Session, is_main, remove_tree

    d = params.decays[branch]
    source = inputs["parent"][0]
    problem = ckpt.check(source, ckpt.fingerprint(params))
    if problem:
        raise ckpt.CheckpointError(f"cannot train decay '{branch}': trunk checkpoint {problem}. "
                                   f"Train it first (`python -m workflow trunk --step {d.from_step}`).")
    fingerprint = ckpt.fingerprint(params, branch)
    model_id, end = f"decay-{branch}", d.end_step
    session = Session(params, branch)
    scratch = paths.scratch_dir("decay", branch)
    if ckpt.check(scratch, fingerprint) is None and d.from_step < ckpt.read_meta(scratch)["step"] < end:
        print(f"{model_id}: resuming from {scratch} (step {ckpt.read_meta(scratch)['step']})")
        session.restore(scratch)
    else:
        session.restore(source, keep_log=False)
        if d.rewarm and d.rewarm.reset_optimizer:
            session.reset_optimizer()
        if d.mixture is not None:
            session.switch_stream(d.mixture)
    meta = lambda: session.meta(model_id, "decay", fingerprint, lineage(params, branch))  # noqa: E731
    session.train_to(end, model_id, scratch, meta)
    session.save(paths.decay_dir(branch), meta())
    if is_main():
        for path in (Path(scratch), Path(paths.decay_dir(branch))):  # as the trunk: what killed attempts left
            for leftover in path.parent.glob(f"{path.name}.*"):
                if LEFTOVER.search(leftover.name):
                    remove_tree(leftover)
    remove_tree(scratch)
