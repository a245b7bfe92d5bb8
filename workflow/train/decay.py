"""Decay branches: from a trunk checkpoint or a decayed one, (optionally re-warm, then) anneal the LR to its final value.

The branch continues the trunk checkpoint's weights, AdamW state (unless `rewarm.reset_optimizer`),
RNG and data stream. Steps keep the trunk's absolute numbering, `start_step + 1 .. end_step`; the LR
schedule counts from the branch point (`loop.schedule`), and every param group carries the branch's own
peak and final LR (`optimizer.optimizer_config`), whatever the trunk checkpoint's groups said.

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
continuation of one trunk run), so `from` names a trunk checkpoint or a decay. A decay has both (its
optimizer state and data position are saved like a trunk's), so a branch from it continues it exactly (WSD-S);
the branch trains with its trunk's model and settings (`Params.trunk_of`).

Heavy imports (torch, megatron) happen inside `run`: the stage table imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workflow import paths
from workflow.params import Params, scoped


def lineage(params: Params, branch: str) -> dict:
    d, t = params.decays[branch], params.trunk
    return {"kind": "decay", "trunk": params.trunk_name, "from": d.parent, "branch": branch,
            "from_step": params.start_step(branch), "steps": params.decay_steps(branch), "rewarm_steps": d.rewarm_steps,
            "shape": d.shape, "peak_lr": d.peak_lr(t), "final_lr": d.min_lr(t), "mixture": d.mixture,
            "reset_optimizer": bool(d.rewarm and d.rewarm.reset_optimizer)}


def branch_point(params: Params, branch: str) -> Callable[[Any], None]:
    """What happens once at the branch point: a fresh optimizer (`rewarm.reset_optimizer`), the branch's mixture."""
    d = params.decays[branch]

    def enter(session: Any) -> None:
        if d.rewarm and d.rewarm.reset_optimizer:
            session.reset_optimizer()
        if d.mixture is not None:
            session.switch_stream(d.mixture)

    return enter


def parent_branch(params: Params, branch: str) -> str | None:
    """The decay a branch starts from (None: it starts from a trunk checkpoint)."""
    parent = params.decays[branch].parent
    return parent[6:] if parent.startswith("decay-") else None


def run(params: Params, branch: str, *, inputs: dict[str, list[str]]) -> None:
    """Train decay branch `branch` from its parent checkpoint `inputs["parent"]`; write `artifacts/decay/<branch>`."""
    from workflow.train import checkpoint as ckpt
    from workflow.train import segment as runner
    from workflow.train.loop import Session

    params = scoped(params, f"decay-{branch}")
    d = params.decays[branch]
    source = inputs["parent"][0]
    problem = ckpt.check(source, ckpt.fingerprint(params, parent_branch(params, branch)))
    if problem:
        raise ckpt.CheckpointError(f"cannot train decay '{branch}': its parent {d.parent} {problem}. "
                                   f"Train it first (`python -m workflow {ckpt.rerun_hint(d.parent)}`).")
    fingerprint = ckpt.fingerprint(params, branch)
    session = Session(params, branch)
    runner.run(params, session, runner.Segment(
        model_id=f"decay-{branch}", kind="decay", end_step=params.end_step(branch), parent=source, out=paths.decay_dir(branch),
        scratch=paths.scratch_dir("decay", branch), fingerprint=fingerprint, lineage=lineage(params, branch),
        keep_parent_log=False, enter=branch_point(params, branch)))
