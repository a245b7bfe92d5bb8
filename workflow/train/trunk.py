"""A trunk: a chain of checkpoints `artifacts/trunk/<name>/step-<N>` (model ids `<name>@<N>`), the stable phase of
a WSD schedule, or (`trunk.schedule: cosine|linear`) one classic run with a fixed horizon, its last checkpoint.

Two ways to run it (same results, bit for bit):
* `run(params, trunk, step, inputs=...)` (Snakemake, one job per segment): continue from the previous checkpoint
  the stage table gives (`inputs["previous"]`, none for the first), train to `step`, write `step-<step>`.
* `run_all(params, segments)` (DVC, one stage per trunk owning `artifacts/trunk/<name>/`): produce every checkpoint in
  order, reusing complete ones whose fingerprint matches, retraining stale ones (from the last valid
  checkpoint before them), deleting unlisted ones.

With `trunk.from_hf` the first segment starts from a Hugging Face Llama checkpoint (`workflow/hf.py`) instead of a
random init: its weights, a fresh optimizer, the trunk's warmup (0 to `lr` over `warmup_steps`) as the re-warm,
steps counted from 0. Its config and tokenizer are checked before anything is built.

Each segment goes through the shared runner (`segment.py`): resume points every `trunk.save_interval`
steps under `artifacts/.scratch/trunk/<name>/step-<N>` (a rerun after a crash, even SIGKILL, continues from one
and ends with the same weights as an uninterrupted run), and the preflight check before its first step.
Heavy imports (torch, megatron) happen inside the functions: the stage table imports this module.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workflow import paths
from workflow.params import Params

STEP_DIR = re.compile(r"^step-(\d+)(?:$|\.)")  # a checkpoint dir, or a writer's temporary of one
Inputs = dict[str, list[str]]


def previous(inputs: Inputs) -> int | None:
    """The step of the checkpoint a segment continues (`inputs["previous"]`; None: it starts from scratch)."""
    return int(STEP_DIR.match(Path(inputs["previous"][0]).name)[1]) if inputs["previous"] else None


def lineage(params: Params, step: int, prev: int | None) -> dict:
    t, name = params.trunk, params.trunk_name
    return {"kind": "trunk", "trunk": name, "from": f"{name}@{prev}" if prev else None, "step": step, "seed": t.seed,
            "lr": t.lr, "warmup_steps": t.warmup_steps, "mixture": t.mixture, "schedule": t.schedule,
            "from_hf": t.from_hf}


def segment(params: Params, step: int, prev: int | None, fingerprint: str):
    from workflow.train import segment as runner

    name = params.trunk_name
    return runner.Segment(model_id=f"{name}@{step}", kind="trunk", end_step=step,
                          parent=paths.trunk_dir(name, prev) if prev is not None else None, out=paths.trunk_dir(name, step),
                          scratch=paths.scratch_dir("trunk", f"{name}/step-{step}"), fingerprint=fingerprint,
                          lineage=lineage(params, step, prev),
                          init=from_hf(params) if prev is None and params.trunk.from_hf else None)


@contextlib.contextmanager
def naming_from_hf(params: Params) -> Iterator[None]:
    """An import's refusal names the key that asked for it."""
    from workflow.hf import HfImportError

    try:
        yield
    except HfImportError as err:
        raise HfImportError(f"trunks.{params.trunk_name}.from_hf: {err}") from None


def check_import(params: Params) -> None:
    """Before anything is built: the trunk's `from_hf` checkpoint is this model, over the study's tokenizer."""
    from workflow import hf

    with naming_from_hf(params):
        hf.check(params.trunk.from_hf, params.model, f"trunks.{params.trunk_name}.model", paths.tokenizer_file())


def from_hf(params: Params):
    """The fresh start of a `from_hf` trunk: the checkpoint's weights into the session's model, then a fresh
    optimizer (megatron's mixed-precision optimizers copy the weights they start from when built)."""
    def init(session) -> None:
        from workflow import hf
        from workflow.train.distributed import is_main

        with naming_from_hf(params):
            hf.load_into(session.model, params.trunk.from_hf, params.model, session.tokenizer.vocab_size,
                         f"trunks.{params.trunk_name}.model")
        session.reset_optimizer()
        if is_main():
            print(f"{params.trunk_name}: starting from {params.trunk.from_hf} (Hugging Face Llama), fresh optimizer, "
                  f"warmup to lr {params.trunk.lr:g} over {params.trunk.warmup_steps} steps", flush=True)

    return init


def run(params: Params, trunk: str, step: int, *, inputs: Inputs) -> None:
    """Train one segment of trunk `trunk`: from `inputs["previous"]` (or from scratch) to `step`."""
    from workflow.train import checkpoint as ckpt
    from workflow.train import segment as runner
    from workflow.train.loop import Session, setup

    params = params.at(trunk)
    setup(params, params.model.parallel)  # process group first: every rank sees the same plan
    prev = previous(inputs)
    if prev is None and params.trunk.from_hf:
        check_import(params)
    fingerprint = ckpt.fingerprint(params)
    if prev is not None:
        problem = ckpt.check(paths.trunk_dir(trunk, prev), fingerprint)
        if problem:
            raise ckpt.CheckpointError(f"cannot train {trunk}@{step}: previous checkpoint {problem}. "
                                       f"Train it first (`python -m workflow trunk --trunk {trunk} --step {prev}`).")
    runner.run(params, Session(params), segment(params, step, prev, fingerprint))


def run_all(params: Params, segments: list[tuple[dict[str, Any], Inputs]]) -> None:
    """Every segment of one trunk (`[(key, inputs)]` in chain order), reusing complete checkpoints whose
    fingerprint matches and deleting checkpoints the chain no longer lists: DVC's `trunk-<name>` stage."""
    from workflow.io import remove_stale_temporaries
    from workflow.train import checkpoint as ckpt
    from workflow.train import segment as runner
    from workflow.train.distributed import barrier, is_main
    from workflow.train.loop import Session, remove_tree, setup

    name = segments[0][0]["trunk"]
    params = params.at(name)
    setup(params, params.model.parallel)
    if params.trunk.from_hf:
        check_import(params)
    fingerprint = ckpt.fingerprint(params)
    chain = [(key["step"], previous(inputs)) for key, inputs in segments]
    root = Path(paths.trunk_root(name))
    listed = {s for s, _ in chain}
    todo = [(s, prev) for s, prev in chain if ckpt.check(paths.trunk_dir(name, s), fingerprint) is not None]
    barrier()  # everyone has judged the checkpoints before rank 0 deletes any
    if is_main():
        found = {int(m[1]) for m in map(STEP_DIR.match, os.listdir(root) if root.is_dir() else []) if m}
        for step in sorted(found):
            remove_stale_temporaries(paths.trunk_dir(name, step))  # what killed writers left (never a live one's)
            if step not in listed and Path(paths.trunk_dir(name, step)).exists():
                print(f"trunk: removing {paths.trunk_dir(name, step)} (not in the checkpoints of trunk {name})")
                remove_tree(paths.trunk_dir(name, step))
        stale = {s for s, _ in todo}
        for step, _ in chain:
            if step not in stale:
                print(f"{name}@{step}: up to date (fingerprint matches), skipped")
            elif Path(paths.trunk_dir(name, step)).exists():
                print(f"{name}@{step}: retraining: {ckpt.check(paths.trunk_dir(name, step), fingerprint)}")
                remove_tree(paths.trunk_dir(name, step))
    barrier()
    session = Session(params) if todo else None
    for step, prev in todo:
        runner.run(params, session, segment(params, step, prev, fingerprint))
