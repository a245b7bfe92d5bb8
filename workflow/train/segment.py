"""One runner for every training run: a trunk segment (`trunk-<N>`) and a decay branch (`decay-<b>`) alike.

1. start: from the segment's scratch save (a resume point of a killed earlier attempt, used only if its
   fingerprint matches and it lies inside the segment), else from the parent model dir (then `enter`, a
   decay's branch-point setup), else where the session already is (a fresh start, then `init`: a trunk's
   imported weights; or the DVC trunk chain continuing in memory);
2. check what is about to be trained against params.yaml and the start's `meta.json` (`preflight`);
3. train to `end_step`, saving a resume point to the scratch dir every `trunk.save_interval` steps;
4. save the model dir atomically, then drop the scratch dir and what killed writers left (their
   `.tmp-<pid>` / `.old-<pid>` dirs; never a live writer's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from workflow.io import remove_stale_temporaries
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train import distributed, preflight
from workflow.train.loop import Session, remove_tree


@dataclasses.dataclass(frozen=True)
class Segment:
    model_id: str  # trunk-<N> | decay-<branch>
    kind: str  # trunk | decay
    end_step: int
    parent: str | None  # the model dir it continues (None: from scratch)
    out: str  # the model dir it writes
    scratch: str  # where its resume points go
    fingerprint: str
    lineage: dict
    keep_parent_log: bool = True  # the trunk's log is cumulative; a branch's starts at the branch point
    enter: Callable[[Session], None] | None = None  # applied once when starting from the parent (a branch point)
    init: Callable[[Session], None] | None = None  # applied once on a fresh start (step 0, no parent): `from_hf`


def say(message: str) -> None:
    if distributed.is_main():
        print(message, flush=True)


def start(session: Session, segment: Segment) -> dict | None:
    """Bring `session` to the segment's first step; returns the `meta.json` of the model dir it now continues
    (None for a fresh start)."""
    parent_meta = ckpt.read_meta(segment.parent) if segment.parent else None
    parent_step = parent_meta["step"] if parent_meta else 0
    scratch_ok = ckpt.check(segment.scratch, segment.fingerprint) is None
    saved = ckpt.read_meta(segment.scratch) if scratch_ok else None
    if saved is not None and max(parent_step, session.step) < saved["step"] < segment.end_step:
        say(f"{segment.model_id}: resuming from {segment.scratch} (step {saved['step']})")
        session.restore(segment.scratch)
        return saved
    if session.step != parent_step:
        session.restore(segment.parent, keep_log=segment.keep_parent_log)
        if segment.enter:
            segment.enter(session)
    elif segment.parent is None and session.step == 0 and segment.init:
        segment.init(session)
    return parent_meta


def run(params: Params, session: Session, segment: Segment) -> None:
    """Train `segment` with `session` and write its model dir (every rank takes part)."""
    parent = start(session, segment)
    preflight.check(params, session, segment.end_step, segment.model_id, parent)
    meta = lambda: session.meta(segment.model_id, segment.kind, segment.fingerprint, segment.lineage)  # noqa: E731
    session.train_to(segment.end_step, segment.model_id, segment.scratch, meta)
    session.save(segment.out, meta())
    if distributed.is_main():
        for path in (segment.scratch, segment.out):
            remove_stale_temporaries(path)
        remove_tree(segment.scratch)
    distributed.barrier()
