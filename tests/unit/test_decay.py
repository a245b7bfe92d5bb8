"""Decay branches: schema, LR curves against megatron's scheduler, optimizer and data continuation."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.conftest import train_params_dict
from workflow import stages
from workflow import paths
from workflow.params import ParamsError, parse_params
from workflow.train import checkpoint as ckpt
from workflow.train.loop import Session


def closed_form(shape: str, r: float) -> float:
    """Fraction of (peak - final) still left after a fraction r of the anneal (megatron's WSD styles)."""
    return {"linear": 1 - r, "cosine": 0.5 * (math.cos(math.pi * r) + 1), "exponential": 2 * 0.5 ** r - 1,
            "minus_sqrt": 1 - math.sqrt(r)}[shape]


def megatron_lrs(peak: float, final: float, shape: str, steps: int, warmup: int = 0) -> list[float]:
    """LRs of steps 1..warmup+steps from megatron's own WSD scheduler, configured directly."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = OptimizerParamScheduler(opt, init_lr=0.0, max_lr=peak, min_lr=final, lr_warmup_steps=warmup,
                                    lr_decay_steps=warmup + steps, lr_decay_style="WSD", wsd_decay_steps=steps,
                                    lr_wsd_decay_style=shape, start_wd=0.0, end_wd=0.0, wd_incr_steps=1,
                                    wd_incr_style="constant")
    out = []
    for _ in range(warmup + steps):
        sched.step(1)
        out.append(opt.param_groups[0]["lr"])
    return out


def study(**decays) -> dict:
    raw = train_params_dict()
    raw["decays"] = decays
    raw["merges"] = {}
    return raw


def test_schema_exactly_one():
    base = {"from": f"main@{8}", "shape": "linear"}
    p = parse_params(study(a={**base, "fraction": 0.26}))
    d = p.decays["a"]
    assert (p.decay_steps("a"), p.total_steps("a"), p.end_step("a"), d.min_lr(p.trunk)) == (2, 2, 10, 0.0)  # round(2.08); ratio 0
    q = parse_params(study(a={**base, "steps": 4, "final_lr_ratio": 0.1, "rewarm": {"steps": 2, "peak_lr": 6e-3}}))
    d = q.decays["a"]
    assert (q.total_steps("a"), d.peak_lr(p.trunk), d.min_lr(p.trunk)) == (6, 6e-3, pytest.approx(6e-4))
    for bad, key in [({**base}, "decays.a"), ({**base, "steps": 4, "fraction": 0.5}, "decays.a"),
                     ({**base, "steps": 4, "final_lr": 0.0, "final_lr_ratio": 0.0}, "decays.a"),
                     ({**base, "steps": 4, "final_lr": 1.0}, "decays.a.final_lr"),
                     ({**base, "fraction": 1.5}, "decays.a.fraction"),
                     ({**base, "steps": 4, "rewarm": {"steps": 0}}, "decays.a.rewarm.steps")]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            parse_params(study(a=bad))


@pytest.mark.parametrize("rewarm", [None, {"steps": 2, "peak_lr": 4e-3}], ids=["plain", "rewarm"])
@pytest.mark.parametrize("shape", ["linear", "cosine", "minus_sqrt", "exponential"])
def test_schedule_follows_megatron(shape, rewarm):
    """`loop.schedule` drives megatron's scheduler to the shape's closed form, counted from the branch point."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from workflow.train.loop import schedule, schedule_origin

    params = parse_params(study(a={"from": f"main@{8}", "steps": 10, "shape": shape, "final_lr": 3e-4, "rewarm": rewarm}))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = OptimizerParamScheduler(opt, **schedule(params, "a"))
    assert schedule_origin(params, "a") == 8 and opt.param_groups[0]["lr"] == (0.0 if rewarm else 3e-3)
    lrs = []
    for _ in range(params.total_steps("a") + 3):
        sched.step(1)
        lrs.append(opt.param_groups[0]["lr"])
    peak, w = (4e-3, 2) if rewarm else (3e-3, 0)
    expected = [peak * k / w for k in range(1, w + 1)] + [3e-4 + (peak - 3e-4) * closed_form(shape, k / 10) for k in range(1, 11)]
    assert lrs[:-3] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[-3:] == [3e-4] * 3  # past the end: the final LR


def test_trunk_schedule_is_warmup_then_constant():
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from workflow.train.loop import schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = OptimizerParamScheduler(opt, **schedule(parse_params(train_params_dict())))
    lrs = []
    for _ in range(10_000):
        sched.step(1)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:2] == pytest.approx([1.5e-3, 3e-3]) and set(lrs[1:]) == {3e-3}  # warmup 2, then constant


def test_decay_lr_curve_and_data(train_study, monkeypatch):
    """Trained branches log megatron's scheduler values; they continue the trunk's stream or, with their
    own mixture, every domain where the trunk left it."""
    raw = train_params_dict()
    raw["decays"] = {s: {"from": f"main@{4}", "steps": 3, "shape": s, "final_lr_ratio": 0.1} for s in ("cosine", "minus_sqrt")}
    raw["decays"]["up"] = {"from": f"main@{8}", "fraction": 0.5, "shape": "linear", "final_lr": 0.0,
                           "mixture": {"prose": 1.0, "code": 3.0}}
    raw["decays"]["again"] = {"from": "decay-cosine", "steps": 2, "shape": "linear", "final_lr": 0.0}  # a branch of a decay
    raw["merges"] = {}
    params = parse_params(raw)
    stages.call(params, "trunk")
    for branch, d in params.decays.items():
        stages.call(params, "decay", branch=branch)
        log = ckpt.read_log(paths.decay_dir(branch))
        assert [r["step"] for r in log] == list(range(params.start_step(branch) + 1, params.end_step(branch) + 1))
        assert [r["lr"] for r in log] == megatron_lrs(3e-3, d.min_lr(params.trunk), d.shape, params.decay_steps(branch))
    assert ckpt.read_log(paths.decay_dir("up"))[-1]["lr"] == 0.0
    meta = ckpt.read_meta(paths.decay_dir("cosine"))
    assert (meta["step"], meta["consumed_samples"], meta["lineage"]["from"]) == (7, 28, "main@4")
    up, trunk_meta = ckpt.read_meta(paths.decay_dir("up")), ckpt.read_meta(paths.trunk_dir("main", 8))
    # same mixture: the trunk's own stream, read on from its position: exactly the samples of trunk steps 5..7
    assert {k: meta["data"][k] for k in ("weights", "offsets")} == {k: trunk_meta["data"][k] for k in ("weights", "offsets")}
    assert meta["data"]["position"] == 28
    # own mixture: each domain continues from its position in the trunk's stream (no trunk sample again)
    assert up["data"]["offsets"] == trunk_meta["data"]["domain_positions"]
    assert up["data"]["weights"] == {"code": 0.75, "prose": 0.25}
    assert all(up["data"]["domain_positions"][d] >= trunk_meta["data"]["domain_positions"][d] for d in ("code", "prose"))
    again = ckpt.read_meta(paths.decay_dir("again"))  # continues decay-cosine: its optimizer and stream position
    assert (again["step"], again["consumed_samples"], again["lineage"]["from"]) == (9, 36, "decay-cosine")
    assert again["data"]["position"] == 36 and again["data"]["weights"] == meta["data"]["weights"]
    assert len({ckpt.read_meta(paths.decay_dir(b))["fingerprint"] for b in params.decays}) == 4


def test_cosine_trunk_lr_curve(train_study):
    """A cosine trunk: megatron's warmup then cosine to final_lr_ratio x lr at its last checkpoint; its
    intermediate checkpoint lies on that curve (a fixed horizon)."""
    params = parse_params({**train_params_dict(schedule="cosine", final_lr_ratio=0.1), "decays": {}, "merges": {}})
    stages.call(params, "trunk", trunk="main", step=4)
    stages.call(params, "trunk", trunk="main", step=8)
    log = ckpt.read_log(paths.trunk_dir("main", 8))
    want = [3e-3 * s / 2 for s in (1, 2)] + [3e-4 + 2.7e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(3, 9)]
    assert [r["lr"] for r in log] == pytest.approx(want, rel=1e-9)
    assert log[-1]["lr"] == pytest.approx(3e-4)


def test_rewarm_and_optimizer_reset(train_study):
    raw = study(keep={"from": f"main@{4}", "steps": 2, "rewarm": {"steps": 2}},
                reset={"from": f"main@{4}", "steps": 2, "rewarm": {"steps": 2, "peak_lr": 6e-3, "reset_optimizer": True}})
    params = parse_params(raw)
    stages.call(params, "trunk", trunk="main", step=4)
    steps = {}
    for branch in params.decays:
        stages.call(params, "decay", branch=branch)
        log = ckpt.read_log(paths.decay_dir(branch))
        peak = params.decays[branch].peak_lr(params.trunk)
        assert [r["lr"] for r in log] == megatron_lrs(peak, 0.0, "linear", 2, warmup=2)
        assert [r["step"] for r in log] == [5, 6, 7, 8]
        session = Session(params, branch)
        session.restore(paths.decay_dir(branch))
        steps[branch] = session.optimizer.sharded_state_dict(session.model.sharded_state_dict())["common_step"]
    assert steps == {"keep": 8.0, "reset": 4.0}  # AdamW's own step count restarted at the branch point
    assert ckpt.read_meta(paths.decay_dir("reset"))["lineage"]["reset_optimizer"] is True
