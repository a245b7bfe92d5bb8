"""`python -m workflow check`'s cost estimate: tokens and FLOPs from the schedule, jobs as Snakemake plans them."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import TINY_PARAMS, run
from workflow import cli
from workflow.params import load_params
from workflow.shapes import flops_per_token


def test_check_prints_tokens_flops_and_gpu_hours(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.read_text())
    cli.main(["check", "--accelerator", "a100", "--mfu", "0.5"])
    out = capsys.readouterr().out
    p = load_params(tmp_path / "params.yaml")
    per_step = p.trunk.global_batch_size * p.model.seq_length
    trained = {"trunk": p.trunk.checkpoints[-1], **{f"decay-{b}": d.total_steps for b, d in p.decays.items()}}
    trained["study"] = sum(trained.values())  # the trunk once, then each branch's own steps
    assert trained["study"] == 24 + 6 + 6 + (2 + 6)  # tiny study: a 2-step re-warm + half of 12 steps
    for name, steps in trained.items():
        flops = steps * per_step * flops_per_token(p.model, p.tokenizer.vocab_size)
        row = re.search(rf"^  {name} +(\d+) steps .* ([\d.]+(?:e-?\d+)?) GPU-h$", out, flags=re.M)
        assert row, out
        assert int(row[1]) == steps
        assert float(row[2]) == pytest.approx(flops / (312e12 * 0.5) / 3600, rel=1e-2)
    assert "on A100" in out and "50% MFU" in out


def test_estimated_jobs_are_the_jobs_snakemake_plans(repo):
    """`check`'s jobs per stage against the job stats of `snakemake -n` on the same study."""
    out = run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "-n", "--cores", "1"], repo,
              env={"SLURM_CONF": "/dev/null"}).stdout
    planned = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M)}
    planned.pop("all", None)
    planned.pop("total", None)
    line = next(l for l in run([sys.executable, "-m", "workflow", "check"], repo).stdout.splitlines()
                if l.startswith("jobs:"))
    estimated = {name: int(n) for name, n in (part.split() for part in line.removeprefix("jobs:").split(","))}
    assert {k: v for k, v in estimated.items() if v} == planned


def test_bad_mfu_and_accelerator_are_refused(capsys):
    for argv in (["check", "--mfu", "0"], ["check", "--accelerator", "tpu9"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    assert "must be in (0, 1]" in capsys.readouterr().err
