"""Trunk / decay training on CPU with a tiny model (fixtures in conftest.py, cwd = tmp study)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from workflow import stages
from workflow import paths
from workflow.params import ParamsError
from workflow.train import checkpoint as ckpt
from workflow.train.loop import Session


def count_steps(monkeypatch) -> list[int]:
    """Record every optimizer step taken from now on."""
    seen: list[int] = []
    original = Session.train_step

    def step(self):
        row = original(self)
        seen.append(row["step"])
        return row

    monkeypatch.setattr(Session, "train_step", step)
    return seen


def log_of(directory) -> list[dict]:
    return ckpt.read_log(directory)


def assert_same_weights(a: dict, b: dict) -> None:
    a, b = ({k: v for k, v in d.items() if isinstance(v, torch.Tensor)} for d in (a, b))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_model_builds_and_learns(train_study):
    params = train_study()
    session = Session(params)
    names = [n for n, _ in session.model.named_parameters()]
    assert not any(n.endswith(".bias") for n in names)
    assert "output_layer.weight" not in names  # tied embeddings
    assert session.model.embedding.word_embeddings.weight.shape[0] == 384  # 300 padded to 128
    losses = [session.train_step()["loss"] for _ in range(15)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3


def test_checkpoint_round_trip(train_study, tmp_path):
    params = train_study()
    a = Session(params)
    for _ in range(3):
        a.train_step()
    a.save(tmp_path / "ck", a.meta("main@3", "trunk", "fp", {}))
    b = Session(params)
    b.restore(tmp_path / "ck")
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a.optimizer.state[pa][key], b.optimizer.state[pb][key]), key
    assert (b.step, b.position, b.scheduler.num_steps) == (3, 12, 3)
    assert torch.equal(torch.get_rng_state(), a.state()["rng"][0]["cpu"])
    assert [g["lr"] for g in a.optimizer.param_groups] == [g["lr"] for g in b.optimizer.param_groups]
    # continuing both gives identical steps
    assert a.train_step()["loss"] == b.train_step()["loss"]
    assert_same_weights(a.model.state_dict(), b.model.state_dict())


def test_resume_from_scratch_is_bit_identical(train_study, train_weights, monkeypatch, tmp_path):
    params = train_study(checkpoints=[6], save_interval=2)
    stages.call(params, "trunk", trunk="main", step=6)
    reference = train_weights(paths.trunk_dir("main", 6), params)
    reference_log = log_of(paths.trunk_dir("main", 6))
    shutil.rmtree(paths.trunk_dir("main", 6))

    original = Session.train_step

    def crash_at_5(self):
        row = original(self)
        if row["step"] == 5:
            raise KeyboardInterrupt("killed")
        return row

    monkeypatch.setattr(Session, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        stages.call(params, "trunk", trunk="main", step=6)
    assert not Path(paths.trunk_dir("main", 6)).exists()
    assert ckpt.read_meta(paths.scratch_dir("trunk", "main/step-6"))["step"] == 4
    monkeypatch.setattr(Session, "train_step", original)
    seen = count_steps(monkeypatch)
    stages.call(params, "trunk", trunk="main", step=6)
    assert seen == [5, 6]  # lost at most save_interval steps
    assert_same_weights(train_weights(paths.trunk_dir("main", 6), params), reference)
    assert log_of(paths.trunk_dir("main", 6)) == reference_log
    assert not Path(paths.scratch_dir("trunk", "main/step-6")).exists()


def test_trunk_extension_matches_one_go(train_study, train_weights, monkeypatch, tmp_path):
    seen = count_steps(monkeypatch)
    short, extended = train_study(checkpoints=[4]), train_study(checkpoints=[4, 8])
    stages.call(short, "trunk", trunk="main", step=4)
    stages.call(extended, "trunk", trunk="main", step=8)
    assert seen == list(range(1, 9))  # the extension trained only the new segment
    shutil.copytree(paths.trunk_root("main"), tmp_path / "segments")
    shutil.rmtree(paths.trunk_root("main"))
    stages.call(extended, "trunk")  # DVC mode, one go
    for step in (4, 8):
        assert_same_weights(train_weights(tmp_path / f"segments/step-{step}", extended),
                            train_weights(paths.trunk_dir("main", step), extended))
    assert log_of(paths.trunk_dir("main", 8)) == log_of(tmp_path / "segments/step-8")
    assert [r["step"] for r in ckpt.read_log(paths.trunk_dir("main", 8))] == list(range(1, 9))  # cumulative
    del seen[:]
    stages.call(extended, "trunk")  # everything up to date: nothing trained
    assert seen == []
    meta = ckpt.read_meta(paths.trunk_dir("main", 8))
    assert (meta["step"], meta["consumed_samples"], meta["tokens_seen"], meta["lr"]) == (8, 32, 32 * 32, 3e-3)
    assert meta["lineage"]["from"] == "main@4"
    # the same per-step curves as dvclive plots (what `dvc plots` reads)
    log = ckpt.read_log(paths.trunk_dir("main", 8))
    for name in ckpt.LIVE_METRICS:
        tsv = (Path(paths.trunk_dir("main", 8)) / ckpt.LIVE / "plots/metrics" / f"{name}.tsv").read_text().splitlines()
        assert tsv[0] == f"step\t{name}" and len(tsv) == 9
        assert [float(line.split("\t")[1]) for line in tsv[1:]] == pytest.approx([row[name] for row in log])
    assert {row["grad_norm"] > 0 for row in log} == {True}
    assert set(log[0]) == {"step", "loss", "lr", "grad_norm", "consumed_samples"}  # nothing wall-clock in the artifact
    assert [row["consumed_samples"] for row in log] == [4 * s for s in range(1, 9)]


def test_extension_trains_only_the_new_segment(train_study, monkeypatch):
    """trunk [2, 4] -> [2, 4, 6]: only steps 5..6 run (DVC's one stage and Snakemake's new job alike);
    the earlier checkpoints are not rewritten, so everything branched from them stays cached."""
    stages.call(train_study(checkpoints=[2, 4]), "trunk")
    stamps = {s: (Path(paths.trunk_dir("main", s)) / ckpt.META).stat().st_mtime_ns for s in (2, 4)}
    seen = count_steps(monkeypatch)
    extended = train_study(checkpoints=[2, 4, 6])
    stages.call(extended, "trunk")
    assert seen == [5, 6]
    assert stamps == {s: (Path(paths.trunk_dir("main", s)) / ckpt.META).stat().st_mtime_ns for s in (2, 4)}
    shutil.rmtree(paths.trunk_dir("main", 6))
    del seen[:]
    stages.call(extended, "trunk", trunk="main", step=6)
    assert seen == [5, 6]


def test_curves_are_the_files_dvclive_writes(tmp_path, monkeypatch):
    """`write_dvclive` writes what `dvclive.Live` writes for the same log, byte for byte (`dvc plots` reads them)."""
    from dvclive import Live

    log = [{"step": s, "loss": 6.0 / s, "lr": 3e-3 * min(1, s / 2), "grad_norm": 0.1 * s + 1e-9,
            "consumed_samples": 4 * s} for s in range(1, 6)]
    ckpt.write_dvclive(tmp_path / "ours", log)
    monkeypatch.chdir(tmp_path)  # outside any git or DVC repository: Live writes only its files
    with Live("theirs", save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for row in log:
            live.step = row["step"]
            for name in ckpt.LIVE_METRICS:
                live.log_metric(name, row[name])

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    ours, theirs = files(tmp_path / "ours"), files(tmp_path / "theirs")
    assert ours == theirs and len(ours) == len(ckpt.LIVE_METRICS) + 1


def test_fingerprint_mismatch(train_study, monkeypatch):
    params = train_study()
    stages.call(params, "trunk", trunk="main", step=4)
    changed = train_study(lr=1e-3)
    with pytest.raises(ckpt.CheckpointError, match="fingerprint"):
        stages.call(changed, "trunk", trunk="main", step=8)
    # DVC mode: stale checkpoints are retrained, unlisted step dirs removed
    Path(paths.trunk_dir("main", 99)).mkdir()
    seen = count_steps(monkeypatch)
    stages.call(changed, "trunk")
    assert seen == list(range(1, 9))
    assert ckpt.read_meta(paths.trunk_dir("main", 4))["fingerprint"] == ckpt.fingerprint(changed)
    assert not Path(paths.trunk_dir("main", 99)).exists()
    # tokens changed -> fingerprint changes too
    with open(paths.tokens_prefix("prose") + ".bin", "ab") as f:
        f.write(b"\0\0")
    assert ckpt.fingerprint(changed) != ckpt.read_meta(paths.trunk_dir("main", 4))["fingerprint"]
    # settings that do not change weights do not change the fingerprint
    assert ckpt.fingerprint(train_study(checkpoints=[4, 8, 12], save_interval=3)) == ckpt.fingerprint(changed.model_copy(
        update={"trunk": changed.trunk.model_copy(update={"lr": 3e-3})}))


def _closed_form(shape: str, r: float) -> float:
    return {"linear": 1 - r, "cosine": 0.5 * (math.cos(math.pi * r) + 1), "exponential": 2 * 0.5 ** r - 1,
            "minus_sqrt": 1 - math.sqrt(r)}[shape]


# decay LR schedules: tests/unit/test_decay.py


def test_decay_branches(train_study, monkeypatch):
    params = train_study()
    stages.call(params, "trunk")
    seen = count_steps(monkeypatch)
    stages.call(params, "decay", branch="lin")
    stages.call(params, "decay", branch="cos")
    assert seen == [5, 6, 7, 8, 9, 10, 11]
    lin, cos = ckpt.read_log(paths.decay_dir("lin")), ckpt.read_log(paths.decay_dir("cos"))
    assert [r["lr"] for r in lin] == pytest.approx([3e-3 * (1 - k / 4) for k in range(1, 5)], abs=1e-15)
    assert lin[-1]["lr"] == 0.0
    assert [r["lr"] for r in cos] == pytest.approx([1e-4 + (3e-3 - 1e-4) * _closed_form("cosine", k / 3)
                                                    for k in range(1, 4)])
    assert cos[-1]["lr"] == pytest.approx(1e-4)
    meta = ckpt.read_meta(paths.decay_dir("lin"))
    assert (meta["step"], meta["consumed_samples"], meta["lineage"]["from"]) == (8, 32, "main@4")
    # default mixture continues the trunk's stream: same data as trunk steps 5..8
    trunk_meta = ckpt.read_meta(paths.trunk_dir("main", 8))
    assert meta["data"] == trunk_meta["data"]
    # own mixture: every domain continues from where the trunk stopped
    cos_meta = ckpt.read_meta(paths.decay_dir("cos"))
    assert cos_meta["data"]["offsets"] == trunk_meta["data"]["domain_positions"]
    assert cos_meta["data"]["weights"] == {"code": 0.75, "prose": 0.25}
    assert cos_meta["fingerprint"] != meta["fingerprint"]


def test_data_stream_is_horizon_independent(train_study):
    from workflow.train.data import DataStream, TokenizerInfo, domain_weights

    params = train_study()
    tok = TokenizerInfo.load(params)
    a = DataStream(params, tok, domain_weights(params, {"prose": 1, "code": 1}))
    late = a.sample(5000)  # many epochs
    b = DataStream(params, tok, domain_weights(params, {"prose": 1, "code": 1}))
    assert torch.equal(b.sample(3), a.sample(3)) and torch.equal(b.sample(5000), late)
    assert b.domain_positions(1000) == {"code": 500, "prose": 500}
    assert a.sample(0).shape == (params.model.seq_length + 1,)


def test_step_must_be_a_checkpoint(train_study):
    with pytest.raises(ParamsError, match=r"trunk --trunk main --step 5: not declared by the study \(declared: "):
        stages.call(train_study(), "trunk", trunk="main", step=5)


def test_only_killed_writers_temporaries_are_removed(train_study):
    """A trunk run removes the `.tmp-<pid>` dirs of killed writers (their pid is gone) next to its outputs and
    scratch saves, and leaves a live writer's alone."""
    import subprocess

    params = train_study(checkpoints=[4])
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        temporaries = {name: Path(f"{base}.tmp-{proc.pid}") for base in (paths.trunk_dir("main", 4), paths.trunk_dir("main", 99),
                       paths.scratch_dir("trunk", "main/step-4")) for name, proc in ((f"{base}:live", live), (f"{base}:dead", dead))}
        for path in temporaries.values():
            path.mkdir(parents=True)
        stages.call(params, "trunk")
        assert {name for name, path in temporaries.items() if path.exists()} == {n for n in temporaries if n.endswith(":live")}
        assert Path(paths.trunk_dir("main", 4)).is_dir() and not Path(paths.scratch_dir("trunk", "main/step-4")).exists()
    finally:
        live.kill()
        live.wait()
