"""Fail fast: before its first step a trunk segment or a decay branch holds what it is about to train against
params.yaml and its parent checkpoint, and stops with one line on a mismatch of the LR on any param group,
the tokens consumed, a domain's data position or the process layout. Each mismatch is provoked here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.conftest import train_params_dict
from workflow import stages
from workflow import paths
from workflow.params import parse_params
from workflow.train import checkpoint as ckpt
from workflow.train import preflight
from workflow.train import optimizer as optim
from workflow.train.loop import Session


def study() -> dict:
    raw = train_params_dict(checkpoints=[4, 8])
    raw["decays"] = {"ratio": {"from": f"main@{4}", "steps": 2, "final_lr_ratio": 0.1},
                     "mixed": {"from": f"main@{4}", "steps": 2, "mixture": {"prose": 1.0, "code": 3.0}}}
    raw["merges"] = {}
    return raw


@pytest.fixture
def trained(train_study):
    """The study with main@4 trained; returns its params."""
    params = parse_params(study())
    stages.call(params, "trunk", trunk="main", step=4)
    return params


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    seen: list[int] = []
    original = Session.train_step

    def step(self):
        seen.append(self.step + 1)
        return original(self)

    monkeypatch.setattr(Session, "train_step", step)
    return seen


def refused(run, match: str, steps: list[int]) -> str:
    with pytest.raises(preflight.PreflightError, match=match) as err:
        run()
    assert "\n" not in str(err.value) and steps == [], (str(err.value), steps)  # one line, no step trained
    return str(err.value)


def edit_meta(directory: str, change) -> None:
    path = Path(directory) / ckpt.META
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_a_consistent_start_passes(trained, steps):
    stages.call(trained, "decay", branch="mixed")
    stages.call(trained, "trunk", trunk="main", step=8)
    assert steps == [5, 6, 5, 6, 7, 8]


def test_param_group_lr_of_another_run(trained, steps, monkeypatch):
    """The GPU bug this guards against: megatron's groups built with the trunk's LR settings (max_lr = trunk.lr,
    min_lr = 0) make a decay ignore its final LR; so does keeping a loaded checkpoint's groups."""
    buggy = lambda params, branch=None, **kw: original(params, None, **kw)  # noqa: E731
    original = optim.optimizer_config
    monkeypatch.setattr(optim, "optimizer_config", buggy)
    message = refused(lambda: stages.call(trained, "decay", branch="ratio"), r"decay-ratio: stopped before step 5: param group 0 would "
                                                           r"train step 5 at lr .* but decays\.ratio in params\.yaml", steps)
    assert "min_lr 0.0" in message
    monkeypatch.setattr(optim, "optimizer_config", original)
    monkeypatch.setattr(optim, "keep_settings", lambda optimizer, settings: None)
    refused(lambda: stages.call(trained, "decay", branch="ratio"), "param group 0 would train step 5", steps)
    assert not Path(paths.decay_dir("ratio")).exists()


def test_scheduler_counting_from_the_wrong_step(trained, steps, monkeypatch):
    original = Session.restore

    def restore(self, directory, keep_log=True):
        original(self, directory, keep_log)
        self.scheduler.num_steps += 4  # e.g. a branch counting from the trunk's start, not the branch point

    monkeypatch.setattr(Session, "restore", restore)
    refused(lambda: stages.call(trained, "decay", branch="ratio"), r"the scheduler is at count 4 for step 4", steps)


def test_tokens_consumed_disagree_with_the_parent(trained, steps):
    edit_meta(paths.trunk_dir("main", 4), lambda m: m.update(consumed_samples=m["consumed_samples"] + 4))
    refused(lambda: stages.call(trained, "trunk", trunk="main", step=8), r"main@8: stopped before step 5: consumed_samples: about to continue at 16 "
                                           r"but the parent checkpoint \(main@4\) says 20", steps)


def test_a_domains_data_position_disagrees_with_the_parent(trained, steps):
    edit_meta(paths.trunk_dir("main", 4), lambda m: m["data"]["domain_positions"].update(code=0))
    refused(lambda: stages.call(trained, "decay", branch="mixed"), r"data position of domain 'code': about to read its sample \d+ but the "
                                                 r"parent checkpoint \(main@4\) stopped at 0", steps)
    refused(lambda: stages.call(trained, "trunk", trunk="main", step=8), "data position of domain 'code'", steps)


def test_process_layout_disagrees_with_params(trained):
    session = Session(trained)  # one process
    raw = study()
    raw["model"]["parallel"] = {"tp": 2, "nproc_per_node": 2}
    with pytest.raises(preflight.PreflightError, match=r"process layout .*'tp': 1.* is not model\.parallel's .*'tp': 2"):
        preflight.check(parse_params(raw), session, 4, "main@4", None)
    preflight.check(trained, session, 4, "main@4", None)  # the layout it runs under passes
