"""Fault injection at named events, for the fault tests (`tests/faults/`).

`ARBOR_FAULT=<event>[:<n>]` in the environment makes the process SIGKILL itself at the n-th (default: first)
`point(<event>)` it reaches; with `ARBOR_FAULT_SCOPE=group` it kills its whole process group (the engine that
started the job too, as a lost node does). `ARBOR_FAULT_DELAY=<event>:<seconds>` sleeps at every occurrence
instead (a slow node: a job that needs longer than its walltime). Unset, `point` is a no-op. Events:

    curate.shard        a curate job has closed one shard file of its temporary dir, before the next or its stats
    io.replace          a complete temporary file or dir (`workflow/io.py`), just before it replaces its output
    io.replaced         a dir output is in place (`atomic_dir`), the job has not ended yet
    checkpoint.shard    a checkpoint's tensor shards are written, its log, curves and meta.json are not yet
    train.step          a training run has finished one optimizer step
    train.saved         a training run has written a resume point (`trunk.save_interval`) and not trained on
    tokenize.publish    tokenize's publish: the old stats file removed, some .bin/.idx pairs replaced, not all
    merge.input         a merge has read and accumulated one more input model, before the next
    eval_tasks.write    eval_tasks has written one task file of its dir, before the next
    evaluate.model      evaluate has loaded the model, before it scores anything
    evaluate.heldout    evaluate has the held-out metrics, before its lm-eval tasks run
    report.plot         report has written one plot into its temporary dir, before the next
"""

from __future__ import annotations

import os
import signal
import time

_seen: dict[str, int] = {}


def wanted() -> tuple[str, int] | None:
    """(event, n) from ARBOR_FAULT, or None."""
    spec = os.environ.get("ARBOR_FAULT")
    if not spec:
        return None
    event, _, n = spec.partition(":")
    return event, int(n or 1)


def point(event: str) -> None:
    """SIGKILL this process (or its group) when it reaches the n-th occurrence of `event` named by ARBOR_FAULT."""
    delay = os.environ.get("ARBOR_FAULT_DELAY")
    if delay and delay.rpartition(":")[0] == event:
        time.sleep(float(delay.rpartition(":")[2]))
    fault = wanted()
    if fault is None or fault[0] != event:
        return
    _seen[event] = _seen.get(event, 0) + 1
    if _seen[event] == fault[1]:
        if os.environ.get("ARBOR_FAULT_SCOPE") == "group":
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

