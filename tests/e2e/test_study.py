"""The whole DAG on the tiny study: Snakemake runs it, DVC records it, and edits re-run only what they touch."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import clone_study, run
from workflow import paths, stages
from workflow.params import load_params

pytestmark = pytest.mark.slow


def snakemake(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2", *args], repo).stdout


def scheduled(repo: Path, *args: str) -> set[str]:
    """Outputs of the jobs a dry run would execute (the `all` target excluded)."""
    out = snakemake(repo, "--dry-run", *args)
    return {o for line in re.findall(r"^\s+output: (.+)$", out, flags=re.M) for o in line.split(", ")}


def dvc(repo: Path, *args: str, check: bool = True):
    return run([sys.executable, "-m", "dvc", *args], repo, check=check)


def dvc_changed(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json").stdout or "{}"))


def edit_params(repo: Path, edit) -> None:
    data = yaml.safe_load((repo / "params.yaml").read_text())
    edit(data)
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory) -> Path:
    """A copy of the session's tiny study (`make study`: Snakemake runs it, DVC records it) for these tests to edit."""
    return clone_study(tiny_study, tmp_path_factory.mktemp("study") / "repo")


def test_every_artifact_exists(study):
    params = load_params(study / "params.yaml")
    for source in params.sources:
        stats = json.loads((study / paths.curated_dir(source) / "stats.json").read_text())
        assert stats["docs_out"] > 0 and list((study / paths.curated_dir(source)).glob("part-*.jsonl.zst"))
    assert (study / paths.tokenizer_file()).is_file()
    for domain in params.domains():
        for f in paths.tokens_files(domain):
            assert (study / f).stat().st_size > 0, f
    for model in params.model_ids():
        model_dir = study / paths.model_dir(model)
        assert (model_dir / "meta.json").is_file(), model
        result = json.loads((study / paths.eval_file(model)).read_text())
        assert result["model"] == model
        for domain in [*params.domains(), "all"]:
            assert math.isfinite(result["heldout"][domain]["loss"]) and result["heldout"][domain]["bpb"] > 0
    assert (study / paths.report_file()).read_text().count("|") > 10
    assert (study / paths.loss_plot()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_everything_is_up_to_date(study):
    assert "Nothing to be done" in snakemake(study, "--dry-run")
    assert dvc_changed(study) == set()


def test_curation_edit_reruns_everything_downstream(study):
    before = (study / "params.yaml").read_text()
    edit_params(study, lambda p: p["curation"].update(min_chars=40))
    try:
        params = load_params(study / "params.yaml")
        everything = {paths.curated_dir(s) for s in params.sources} | {paths.tokenizer_dir(), paths.tasks_dir(), paths.report_dir()}
        assert everything <= scheduled(study)
        # curation feeds every other stage: the edit schedules the whole DAG, as --forceall plans it
        assert scheduled(study) == scheduled(study, "--forceall")
        # min_chars is read by the per-file filters only: DVC flags them; the rest re-runs as their outputs change
        assert dvc_changed(study) == {"resolve"} | {f"curate_shard-{s}-{p}" for s in params.sources
                                                    for p in stages.shard_parts(params, s)}
    finally:
        (study / "params.yaml").write_text(before)
        run([sys.executable, "-m", "workflow", "dvc-yaml"], study)


def test_new_branch_runs_only_that_branch(study):
    edit_params(study, lambda p: p["decays"].update(extra={"from": f"main@{12}", "steps": 4, "shape": "minus_sqrt", "final_lr": 0.0}))
    assert scheduled(study) == {paths.decay_dir("extra"), paths.eval_file("decay-extra"), paths.report_dir()}
    assert dvc_changed(study) == {"resolve", "decay-extra", "evaluate-decay@extra", "report"}
    ran = dvc(study, "repro").stdout
    assert set(re.findall(r"Running stage '([^']+)'", ran)) == {"resolve", "decay-extra", "evaluate-decay@extra", "report"}
    assert dvc_changed(study) == set()
    assert (study / paths.eval_file("decay-extra")).is_file()


def test_loss_weighted_merge_waits_for_its_inputs_evals(study):
    """A loss_weighted merge reads its inputs' evals: an edge in both engines; adding one runs only it."""
    from tests.engines import dvc_jobs, snakemake_jobs

    edit_params(study, lambda p: p["merges"].update(
        lw2={"models": ["decay-short", "decay-late"], "method": "loss_weighted", "temperature": 0.1}))
    evals = {paths.eval_file("decay-short"), paths.eval_file("decay-late")}
    assert evals <= snakemake_jobs(study)[paths.merge_dir("lw2")].inputs
    assert evals <= dvc_jobs(study)[paths.merge_dir("lw2")].inputs
    assert scheduled(study) == {paths.merge_dir("lw2"), paths.eval_file("merge-lw2"), paths.report_dir()}
    ran = dvc(study, "repro").stdout
    assert set(re.findall(r"Running stage '([^']+)'", ran)) == {"resolve", "merge-lw2", "evaluate-merge@lw2", "report"}
    losses = [json.loads((study / paths.eval_file(m)).read_text())["heldout"]["all"]["loss"] for m in ("decay-short", "decay-late")]
    weights = [math.exp(-loss / 0.1) for loss in losses]
    meta = json.loads((study / paths.merge_dir("lw2") / "meta.json").read_text())
    assert [i["model"] for i in meta["lineage"]["inputs"]] == ["decay-short", "decay-late"]
    assert [i["weight"] for i in meta["lineage"]["inputs"]] == pytest.approx([w / sum(weights) for w in weights])
