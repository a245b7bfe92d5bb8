"""One optimizer path: megatron's own param groups (as `get_megatron_optimizer` builds them on GPU) and megatron's
scheduler set the LR of every group on every backend. The groups carry each run's own peak and final LR: a
decay anneals to its `final_lr_ratio` and a re-warm climbs to its own `peak_lr`, also after loading the trunk
checkpoint, whose groups carried the trunk's."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.conftest import train_params_dict
from workflow import stages
from workflow import paths
from workflow.params import parse_params
from workflow.train import backend as be
from workflow.train import checkpoint as ckpt
from workflow.train import optimizer as optim
from workflow.train.loop import Session

PEAK, REWARM_PEAK = 3e-3, 6e-3


def study() -> dict:
    raw = train_params_dict(checkpoints=[4])
    raw["decays"] = {
        "ratio": {"from": f"main@{4}", "steps": 4, "shape": "linear", "final_lr_ratio": 0.1},
        "rewarm": {"from": f"main@{4}", "steps": 4, "shape": "cosine", "final_lr_ratio": 0.1,
                   "rewarm": {"steps": 2, "peak_lr": REWARM_PEAK}},
    }
    raw["merges"] = {}
    return raw


def expected_lr(branch: str, k: int) -> float:
    """LR of the k-th step (1-based) after the branch point, in closed form."""
    if branch == "ratio":
        return 0.1 * PEAK + 0.9 * PEAK * (1 - k / 4)
    if k <= 2:
        return REWARM_PEAK * k / 2
    return 0.1 * REWARM_PEAK + 0.9 * REWARM_PEAK * 0.5 * (math.cos(math.pi * (k - 2) / 4) + 1)


def gpu_groups(params, branch, model) -> list[dict]:
    """The param groups the GPU backend's `get_megatron_optimizer` builds (megatron's `_get_param_groups` over
    the GPU backend's OptimizerConfig), built here on CPU."""
    gpu = be.Backend("gpu", "nccl", be.gpu_config_kwargs(params.model))
    return optim.param_groups(model, gpu.optimizer_config(params, branch))


def test_gpu_config_carries_the_branch_lrs():
    params = parse_params(study())
    gpu = be.Backend("gpu", "nccl", be.gpu_config_kwargs(params.model))
    assert (gpu.optimizer_config(params).lr, gpu.optimizer_config(params).min_lr) == (PEAK, 0.0)
    ratio, rewarm = gpu.optimizer_config(params, "ratio"), gpu.optimizer_config(params, "rewarm")
    assert (ratio.lr, ratio.min_lr, ratio.bf16) == (PEAK, pytest.approx(0.1 * PEAK), True)
    assert (rewarm.lr, rewarm.min_lr) == (REWARM_PEAK, pytest.approx(0.1 * REWARM_PEAK))


def test_every_param_group_follows_the_branch_schedule(train_study, monkeypatch):
    params = parse_params(study())
    stages.call(params, "trunk", trunk="main", step=4)
    seen: dict[str, list[list[float]]] = {}
    original = Session.train_step

    def record(self):
        row = original(self)
        seen.setdefault(self.branch, []).append([g["lr"] for g in self.optimizer.param_groups])
        return row

    monkeypatch.setattr(Session, "train_step", record)
    for branch in ("ratio", "rewarm"):
        stages.call(params, "decay", branch=branch)
        session = Session(params, branch)
        session.restore(paths.decay_dir(branch))
        model = session.model
        # the CPU optimizer's groups are megatron's groups as the GPU backend builds them: same split, same settings
        cpu_groups = session.optimizer.param_groups
        built = gpu_groups(params, branch, model)
        assert [[id(p) for p in g["params"]] for g in cpu_groups] == [[id(p) for p in g["params"]] for g in built]
        for cpu, gpu in zip(cpu_groups, built):
            assert {k: cpu[k] for k in ("max_lr", "min_lr", "wd_mult")} == {k: gpu[k] for k in ("max_lr", "min_lr", "wd_mult")}
        assert [g["wd_mult"] for g in cpu_groups] == [1.0, 0.0] and all(g["params"] for g in cpu_groups)
        # the LR of every group at the first, a middle and the last step of the branch
        lrs = seen[branch]
        assert len(lrs) == 6 if branch == "rewarm" else len(lrs) == 4
        for k in (1, 2, 3, len(lrs)):
            for lr in lrs[k - 1]:
                assert lr == pytest.approx(expected_lr(branch, k), rel=1e-12), (branch, k)
        assert lrs[-1] == [pytest.approx((PEAK if branch == "ratio" else REWARM_PEAK) * 0.1, rel=1e-12)] * 2
        assert ckpt.read_log(paths.decay_dir(branch))[-1]["lr"] == lrs[-1][0]  # the log records group 0's


def test_loading_keeps_this_runs_group_settings(train_study):
    """The trunk checkpoint's groups carry the trunk's max_lr / min_lr; a decay loading it keeps its own."""
    params = parse_params(study())
    stages.call(params, "trunk", trunk="main", step=4)
    session = Session(params, "rewarm")
    session.restore(paths.trunk_dir("main", 4), keep_log=False)
    assert [(g["max_lr"], g["min_lr"]) for g in session.optimizer.param_groups] == \
        [(REWARM_PEAK, pytest.approx(0.1 * REWARM_PEAK))] * 2
    trunk_session = Session(params)
    trunk_session.restore(paths.trunk_dir("main", 4))  # what the checkpoint itself holds: the trunk's
    assert [(g["max_lr"], g["min_lr"]) for g in trunk_session.optimizer.param_groups] == [(PEAK, 0.0)] * 2
    for a, b in zip(session.model.parameters(), trunk_session.model.parameters()):  # same state otherwise
        assert torch.equal(session.optimizer.state[a]["exp_avg"], trunk_session.optimizer.state[b]["exp_avg"])
