"""Fail fast: before the first step of a trunk segment or a decay branch, hold what is about to be trained
against params.yaml and the checkpoint it starts from; a mismatch stops the stage with one line.

* LR: the LR megatron's scheduler will set on every param group at the first and the last step of the run
  equals the schedule params.yaml declares (a group carrying another run's `max_lr`/`min_lr` — a resumed run
  keeping its checkpoint's LR, a decay annealing to the trunk's final LR — or a scheduler counting from the
  wrong step is caught before it trains a step);
* tokens consumed: step, consumed samples and tokens equal the parent's `meta.json`, and the stream position
  is where that many samples leave it;
* data: each domain's position equals the parent's, the domain weights are params.yaml's mixture;
* layout: the running processes (world, TP, PP, data-parallel replicas) and the model's parallel config are
  `model.parallel`, and the global batch splits evenly into their micro-batches.
"""

from __future__ import annotations

import math

from workflow.errors import StageError
from workflow.params import Params, for_run
from workflow.train import distributed
from workflow.train.data import domain_weights


class PreflightError(StageError):
    """What a stage is about to train disagrees with params.yaml or its parent checkpoint."""


def reference_lr(params: Params, branch: str | None, count: int) -> float:
    """The LR params.yaml declares at scheduler count `count` (steps since the schedule's origin): megatron's
    scheduler over `loop.schedule`, for a group that carries no LR of its own."""
    import torch
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from workflow.train.loop import schedule

    scheduler = OptimizerParamScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0),
                                        **schedule(params, branch))
    scheduler.num_steps = count
    return scheduler.get_lr({})


def scheduled_lr(scheduler, group: dict, count: int) -> float:
    """The LR `scheduler` sets on `group` once its count reaches `count` (its state is left as it was)."""
    now = scheduler.num_steps
    scheduler.num_steps = count
    try:
        return scheduler.get_lr(group)
    finally:
        scheduler.num_steps = now


def lr_problem(params: Params, session, end_step: int) -> str | None:
    from workflow.train.loop import schedule_origin

    branch = session.branch
    origin = schedule_origin(params, branch)
    section = f"decays.{branch}" if branch else f"trunks.{params.trunk_name}"
    for step in (session.step + 1, end_step):
        want = reference_lr(params, branch, step - origin)
        for i, group in enumerate(session.optimizer.param_groups):
            got = scheduled_lr(session.scheduler, group, session.scheduler.num_steps + step - session.step)
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15):
                return (f"param group {i} would train step {step} at lr {got:.6g} but {section} in params.yaml gives "
                        f"{want:.6g} (the group carries max_lr {group.get('max_lr')}, min_lr {group.get('min_lr')}; "
                        f"the scheduler is at count {session.scheduler.num_steps} for step {session.step})")
    return None


def consumption_problem(params: Params, session, parent: dict | None) -> str | None:
    branch = session.branch
    gbs, seq = params.trunk.global_batch_size, params.model.seq_length
    switched = branch is not None and params.decays[branch].mixture is not None
    stream_start = params.start_step(branch) if switched else 0  # a decay's own mixture is a new stream
    have = {"step": session.step, "consumed_samples": session.step * gbs, "tokens_seen": session.step * gbs * seq}
    want = {k: parent.get(k) for k in have} if parent else {"step": 0, "consumed_samples": 0, "tokens_seen": 0}
    source = f"the parent checkpoint ({parent.get('model_id')}) says" if parent else "a fresh start is"
    for key in have:
        if have[key] != want[key]:
            return f"{key}: about to continue at {have[key]:,} but {source} {want[key]}"
    expected_position = (session.step - stream_start) * gbs
    if session.position != expected_position:
        return (f"data position: the stream is at sample {session.position:,} but step {session.step} x "
                f"trunk.global_batch_size {gbs} puts it at {expected_position:,}")
    return None


def data_problem(params: Params, session, parent: dict | None) -> str | None:
    branch = session.branch
    mixture = params.decays[branch].mixture if branch and params.decays[branch].mixture else params.trunk.mixture
    weights = domain_weights(params, mixture)
    key = f"decays.{branch}.mixture" if branch and params.decays[branch].mixture else f"trunks.{params.trunk_name}.mixture"
    if set(weights) != set(session.stream.weights) or any(
            not math.isclose(weights[d], session.stream.weights[d], rel_tol=1e-9) for d in weights):
        return f"domain weights {session.stream.weights} are not {key} of params.yaml ({weights})"
    positions = session.stream.domain_positions(session.position)
    expected = parent["data"]["domain_positions"] if parent else {}
    for domain, at in positions.items():
        if at != expected.get(domain, 0):
            source = f"the parent checkpoint ({parent.get('model_id')})" if parent else "a fresh start"
            return (f"data position of domain '{domain}': about to read its sample {at:,} but {source} "
                    f"stopped at {expected.get(domain, 0):,}")
    return None


def layout_problem(params: Params, session) -> str | None:
    from megatron.core.utils import unwrap_model

    par, t = params.model.parallel, params.trunk
    world = par.nproc_per_node * par.nodes
    want = {"world": world, "tp": par.tp, "pp": par.pp, "dp": world // (par.tp * par.pp)}
    have = distributed.layout()
    if have != want:
        return f"process layout {have} is not model.parallel's {want}"
    config = unwrap_model(session.model).config
    if (config.tensor_model_parallel_size, config.pipeline_model_parallel_size) != (par.tp, par.pp):
        return (f"the model is built for tp {config.tensor_model_parallel_size}, pp {config.pipeline_model_parallel_size}"
                f" but model.parallel says tp {par.tp}, pp {par.pp}")
    if t.global_batch_size % (t.micro_batch_size * have["dp"]):
        return (f"trunk.global_batch_size {t.global_batch_size} does not split into micro-batches of "
                f"{t.micro_batch_size} over {have['dp']} data-parallel replicas")
    return None


def check(params: Params, session, end_step: int, model_id: str, parent: dict | None) -> None:
    """Raise PreflightError (one line) unless `session`, about to train steps `session.step + 1 .. end_step`, is
    what `params` (params.yaml) and `parent` (the `meta.json` of the model dir it continues, None for a fresh
    start) say."""
    params = for_run(params, session.branch)
    checks = (lambda: layout_problem(params, session), lambda: consumption_problem(params, session, parent),
              lambda: data_problem(params, session, parent), lambda: lr_problem(params, session, end_step))
    for problem in (found() for found in checks):
        if problem:
            raise PreflightError(f"{model_id}: stopped before step {session.step + 1}: {problem}")
