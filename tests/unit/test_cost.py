"""`python -m workflow check`'s cost estimate: tokens and FLOPs from the schedule, jobs as Snakemake plans them."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

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
    # each trunk to its last checkpoint once, then each branch's own steps, each in its trunk's shape and batch
    trained = {**{i[-1]: (t, p.trunks[t].checkpoints[-1]) for t in p.trunks for i in [p.trunk_ids(t)]},
               **{f"decay-{b}": (p.trunk_of(f"decay-{b}"), p.total_steps(b)) for b in p.decays}}
    assert sum(n for _, n in trained.values()) == 24 + 24 + 6 + 6 + (2 + 6)  # tiny study: a 2-step re-warm + half of 12 steps
    flops = {name: n * p.trunks[t].global_batch_size * p.trunks[t].model.seq_length
             * flops_per_token(p.trunks[t].model, p.tokenizer.vocab_size) for name, (t, n) in trained.items()}
    rows = {name: (n, flops[name]) for name, (_, n) in trained.items()}
    rows["study"] = (sum(n for _, n in trained.values()), sum(flops.values()))
    for name, (steps, f) in rows.items():
        row = re.search(rf"^  {name} +(\d+) steps .* ([\d.]+(?:e-?\d+)?) GPU-h$", out, flags=re.M)
        assert row, out
        assert int(row[1]) == steps
        assert float(row[2]) == pytest.approx(f / (312e12 * 0.5) / 3600, rel=1e-2)
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


def test_each_trunk_costs_in_its_own_shape():
    """A wider named trunk: its row and its checkpoints cost its own shape; decays and merges their trunk's."""
    from workflow.cost import checkpoint_bytes, runs
    from workflow.params import parse_params
    from workflow.shapes import parameters

    raw = yaml.safe_load(TINY_PARAMS.read_text())
    raw["trunks"]["cos"]["model"] = {"hidden_size": 128}
    p = parse_params(raw)
    main, wide = p.trunks["main"].model, p.trunks["cos"].model
    vocab, per_step = p.tokenizer.vocab_size, p.trunk.global_batch_size * p.model.seq_length
    by_name = {r.name: r for r in runs(p)}
    assert by_name["cos@24"].flops == 24 * per_step * flops_per_token(wide, vocab) > by_name["main@24"].flops
    assert by_name["decay-late"].flops == 6 * per_step * flops_per_token(main, vocab)
    small, big = parameters(main, vocab), parameters(wide, vocab)
    # cpu: 4 + 8 bytes per parameter with optimizer state (2 main checkpoints, 1 cos, 3 decays), 4 for the 3 merges
    assert checkpoint_bytes(p, "cpu") == 12 * (2 * small + big + 3 * small) + 4 * 3 * small
