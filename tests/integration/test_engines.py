"""Snakemake and DVC declare the same study: outputs, commands, edges and tracked params, read back from each engine.

Both are rendered from the stage table (workflow/stages.py), so this proves the renderings, not the table:
tests/integration/test_invalidation.py holds the engines against what the stages really read and do.
Stated differences: the trunk's granularity (Snakemake runs one job per segment, `trunk --trunk T --step N` ->
artifacts/trunk/T/step-N from the previous checkpoint; DVC one resuming `trunk-T` stage per trunk that owns
artifacts/trunk/T/ and also tracks its list of checkpoints), the report's dependencies (DVC: the
directories holding the evals and models), and DVC's `resolve` stage (writes the params its stages track).
"""

from __future__ import annotations

import re
from pathlib import Path
import sys

import pytest

from tests.conftest import ROOT, TINY_PARAMS, copy_repo, run
from tests.engines import dvc_jobs, snakemake_jobs
from workflow import paths, stages
from workflow.engines import dvc as dvc_engine
from workflow.params import load_params

TRUNK_STEP = re.compile(r"^artifacts/trunk/([a-z0-9][a-z0-9_-]*)/step-\d+$")


def to_dvc_granularity(path: str) -> str:
    """artifacts/trunk/T/step-N (a Snakemake trunk job's output) -> artifacts/trunk/T (DVC's stage of trunk T)."""
    return str(Path(path).parent) if TRUNK_STEP.match(path) else path


def as_dvc_deps(inputs: frozenset[str], dvc_deps: frozenset[str]) -> set[str]:
    """Snakemake's inputs as DVC lists them: an input whose directory DVC depends on is that directory (the
    tokens; the report's evals and models)."""
    return {str(Path(i).parent) if str(Path(i).parent) in dvc_deps else i for i in inputs}


@pytest.fixture(scope="module", params=["default", "tiny"])
def engines(request, tmp_path_factory):
    params = None if request.param == "default" else TINY_PARAMS
    repo = copy_repo(tmp_path_factory.mktemp(request.param), params)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    return load_params(repo / "params.yaml"), snakemake_jobs(repo), dvc_jobs(repo)


def test_same_outputs(engines):
    params, smk, dvc = engines
    assert {to_dvc_granularity(o) for o in smk} == set(dvc) - {paths.stage_params_dir()}
    assert {o for o in smk if TRUNK_STEP.match(o)} == {paths.trunk_dir(t, s) for t in params.trunks for s in params.trunks[t].checkpoints}


def test_same_commands(engines):
    params, smk, dvc = engines
    for out, job in smk.items():
        if TRUNK_STEP.match(out):
            step = int(out.rsplit("-", 1)[1])
            assert job.cmd == f"{dvc[to_dvc_granularity(out)].cmd} --step {step}"
        else:
            assert job.cmd == dvc[out].cmd, out


def test_same_tracked_params(engines):
    _, smk, dvc = engines
    for out, job in smk.items():
        if TRUNK_STEP.match(out):  # DVC's stage of the trunk also tracks its list of checkpoints
            run_all_reads = {r.format(TRUNK_STEP.match(out)[1]) for r in stages.STAGES["trunk"].run_all_reads}
            assert job.params - run_all_reads == dvc[to_dvc_granularity(out)].params - run_all_reads, out
            assert run_all_reads <= dvc[to_dvc_granularity(out)].params, out
        else:
            assert job.params == dvc[out].params, out


def test_same_edges(engines):
    params, smk, dvc = engines
    for out, job in smk.items():
        if TRUNK_STEP.match(out):  # a segment reads the previous checkpoint: an edge inside DVC's trunk stage
            prev = [i for i in job.inputs if TRUNK_STEP.match(i)]
            trunk = TRUNK_STEP.match(out)[1]
            steps = list(params.trunks[trunk].checkpoints)
            i = steps.index(int(out.rsplit("-", 1)[1]))
            assert prev == ([paths.trunk_dir(trunk, steps[i - 1])] if i else [])
            assert as_dvc_deps(job.inputs - set(prev), dvc[paths.trunk_root(trunk)].inputs) == dvc[paths.trunk_root(trunk)].inputs
        else:
            assert as_dvc_deps(job.inputs, dvc[out].inputs) == dvc[out].inputs, out


def test_dvc_yaml_is_current():
    """The committed dvc.yaml is what `python -m workflow dvc-yaml` generates from params.yaml."""
    assert (ROOT / "dvc.yaml").read_text() == dvc_engine.render(load_params(ROOT / "params.yaml"))


def test_stale_dvc_yaml_is_refused(repo):
    """`resolve`, DVC's first stage, refuses a dvc.yaml that lacks a new merge, saying what changed."""
    text = (repo / "params.yaml").read_text().replace("merges:\n  both:", "merges:\n  other:\n    models: [main@12]\n  both:")
    (repo / "params.yaml").write_text(text)
    proc = run([sys.executable, "-m", "workflow", "resolve"], repo, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: dvc.yaml is out of date with params.yaml (new stages: merge-other): "
                                  "run `python -m workflow dvc-yaml`")
    assert proc.stderr.count("\n") == 1


def test_snakemake_lint():
    proc = run([sys.executable, "-m", "snakemake", "--lint"], ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
