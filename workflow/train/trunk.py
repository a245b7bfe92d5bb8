"""Stable phase of the WSD schedule: a chain of checkpoints `artifacts/trunk/step-<N>`.

Two ways to run it (same results, bit for bit):
* `run(params, step, inputs=...)` (Snakemake, one job per segment): continue from the previous checkpoint
  the stage table gives (`inputs["previous"]`, none for the first), train to `step`, write `step-<step>`.
* `run_all(params, segments)` (DVC, one stage owning `artifacts/trunk/`): produce every checkpoint in
  order, reusing complete ones whose fingerprint matches, retraining stale ones (from the last valid
  checkpoint before them), deleting unlisted ones.

Inside a segment a resume point is saved every `trunk.save_interval` steps under
`artifacts/.scratch/trunk/step-<N>`; a rerun after a crash (even SIGKILL) continues from it and ends
with the same weights as an uninterrupted run. A scratch save is used only if its fingerprint matches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from workflow import paths
from workflow.params import Params

STEP_DIR = re.compile(r"^step-(\d+)$")
LEFTOVER = re.compile(r"\.(tmp|old)-\d+$")  # what a killed `atomic_dir` leaves behind


def previous(inputs: dict[str, list[str]]) -> int | None:
    """The step of the checkpoint a segment starts from (None for the first): its `inputs["previous"]`."""
    if not inputs["previous"]:
        return None
    return int(STEP_DIR.match(Path(inputs["previous"][0]).name).group(1))


def lineage(params: Params, step: int, prev: int | None) -> dict:
    t = params.trunk
    return {"kind": "trunk", "from": f"trunk-{prev}" if prev else None, "step": step, "seed": t.seed, "lr": t.lr,
            "warmup_steps": t.warmup_steps, "mixture": t.mixture}


def say(message: str) -> None:
    from workflow.train.loop import is_main

    if is_main():
        print(message, flush=True)


def run(params: Params, step: int, *, inputs: dict[str, list[str]]) -> None:
    """Train one trunk segment: from `inputs["previous"]` (or from scratch) to `step`."""
    from workflow.train import checkpoint as ckpt
    from workflow.train.loop import Session, setup

    setup(params, params.model.parallel)  # process group first: every rank sees the same plan
    fingerprint = ckpt.fingerprint(params)
    prev = previous(inputs)
    if prev is not None:
        problem = ckpt.check(paths.trunk_dir(prev), fingerprint)
        if problem:
            raise ckpt.CheckpointError(f"cannot train trunk step {step}: previous checkpoint {problem}. "
                                       f"Train it first (`python -m workflow trunk --step {prev}`).")
    _segment(Session(params), params, step, prev, fingerprint)


def run_all(params: Params, segments: list[tuple[dict[str, Any], dict[str, list[str]]]]) -> None:
    """Every segment (`[(key, inputs)]` in chain order), reusing complete checkpoints whose fingerprint
    matches and deleting checkpoints the chain no longer lists: DVC's one `trunk` stage."""
    from workflow.train import checkpoint as ckpt
    from workflow.train.loop import Session, is_main, remove_tree, setup

    setup(params, params.model.parallel)
    fingerprint = ckpt.fingerprint(params)
    chain = [(key["step"], previous(inputs)) for key, inputs in segments]
    root = Path(paths.trunk_root())
    listed = {f"step-{s}" for s, _ in chain}
    todo = [(s, prev) for s, prev in chain if ckpt.check(paths.trunk_dir(s), fingerprint) is not None]
    _barrier()  # everyone has judged the checkpoints before rank 0 deletes any
    if is_main():
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            if entry.name not in listed and (STEP_DIR.match(entry.name) or LEFTOVER.search(entry.name)):
                print(f"trunk: removing {entry} (not in trunk.checkpoints)")
                remove_tree(entry)
        stale = {s for s, _ in todo}
        for step, _ in chain:
            if step not in stale:
                print(f"trunk-{step}: up to date (fingerprint matches), skipped")
            elif Path(paths.trunk_dir(step)).exists():
                print(f"trunk-{step}: retraining: {ckpt.check(paths.trunk_dir(step), fingerprint)}")
                remove_tree(paths.trunk_dir(step))
    _barrier()
    session = Session(params) if todo else None
    for step, prev in todo:
        _segment(session, params, step, prev, fingerprint)


def _segment(session: Any, params: Params, step: int, prev: int | None, fingerprint: str) -> None:
    """Bring `session` to `step` (from scratch save, previous checkpoint or its current state) and save step-N."""
    from workflow.train import checkpoint as ckpt
    from workflow.train.loop import is_main, remove_tree

    lineage_ = lineage(params, step, prev)
    prev = prev or 0
    model_id = f"trunk-{step}"
    scratch = paths.scratch_dir("trunk", f"step-{step}")
    saved = ckpt.read_meta(scratch)["step"] if ckpt.check(scratch, fingerprint) is None else None
    if saved is not None and max(prev, session.step) < saved < step:
        say(f"{model_id}: resuming from {scratch} (step {saved})")
        session.restore(scratch)
    elif session.step != prev:
        session.restore(paths.trunk_dir(prev))
    meta = lambda: session.meta(model_id, "trunk", fingerprint, lineage_)  # noqa: E731
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
    import torch

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
