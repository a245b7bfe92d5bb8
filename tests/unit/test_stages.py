"""The stage table: every stage has its entry, its rule file and its code; the CLI, the resources and the engines
come from it; stage code stays below it."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_PARAMS
from workflow import cli, stages
from workflow.curate import readers
from workflow.engines import dvc as dvc_engine
from workflow.params import ParamsError, load_params, parse_params


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_every_stage_has_its_rule_file_and_code(name):
    stage = stages.STAGES[name]
    rule = ROOT / "rules" / f"{name}.smk"
    assert rule.is_file(), f"rules/{name}.smk is missing"
    text = rule.read_text()
    module = inspect.getsourcefile(stage.run)
    assert text.splitlines()[0].startswith(f"# {module.removeprefix(str(ROOT) + '/')}:"), \
        f"rules/{name}.smk: the first line names the module the rule runs"
    assert re.search(rf"^rule {name}:$", text, flags=re.M)
    for helper in ("stage_inputs", "stage_outputs", "stage_params", "stage_log", "stage_benchmark", "stage_threads",
                   "stage_resources", "stage_env", "stage_shell"):
        assert f'{helper}("{name}")' in text, f"rules/{name}.smk: {helper}"
    assert f'include: "rules/{name}.smk"' in (ROOT / "Snakefile").read_text()
    params = inspect.signature(stage.run).parameters  # keys (wildcards = CLI options), then the inputs
    assert [p for p in params if p not in ("params", "inputs", "workers")] == list(stage.key_names)
    assert params["inputs"].kind is inspect.Parameter.KEYWORD_ONLY


def test_no_rule_file_without_a_stage():
    smk = {p.stem for p in (ROOT / "rules").glob("*.smk")} - {"common"}
    assert smk == set(stages.STAGES)


def test_cli_has_one_command_per_stage_with_its_keys():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    for name, stage in stages.STAGES.items():
        options = {a.dest for a in sub.choices[name]._actions} - {"help"}
        assert options == set(stage.key_names), name


def test_resources_may_name_only_stages():
    params = load_params(TINY_PARAMS)
    stages.check_resources(params.model_copy(update={"resources": {"decay": {}}}))
    with pytest.raises(ParamsError, match=r"resources\.decays: not a stage \(stages: curate_shard, "):
        stages.check_resources(params.model_copy(update={"resources": {"decays": {}}}))


def test_instances_outputs_and_names_are_unique():
    params = load_params(ROOT / "params.yaml")
    jobs = stages.jobs(params)
    labels = [j.label for j in jobs]
    outputs = [o for j in jobs for o in j.outputs]
    assert len(labels) == len(set(labels)) and len(outputs) == len(set(outputs))
    dvc_stages = dvc_engine.document(params)["stages"]
    for job in jobs:  # every instance runs under a DVC stage of the document (a foreach item, or the trunk's one)
        assert dvc_engine.stage_name(job.stage, job.key, params).split("@")[0] in dvc_stages, job.label


def test_stage_arguments_are_checked_in_one_place():
    params = load_params(TINY_PARAMS)
    for stage, key, message in (("decay", {"branch": "nope"}, "decay --branch nope: not declared by the study"),
                                ("trunk", {"trunk": "main", "step": "13"}, "trunk --trunk main --step 13: not declared by the study (declared: main-12, main-24, cos-24)"),
                                ("evaluate", {"model": "main@13"}, "evaluate --model main@13: not declared")):
        with pytest.raises(ParamsError, match=re.escape(message)):
            stages.check_key(params, stages.STAGES[stage], key)


def test_the_table_loads_without_heavy_libraries():
    """Snakemake imports the table on every start (and every SLURM job step): stage modules import torch,
    megatron, datatrove, lm-eval and matplotlib only when they run."""
    code = ("import sys; import workflow.stages, workflow.engines.dvc, workflow.engines.snakemake; "
            "print(sorted(m for m in ('torch', 'megatron', 'datatrove', 'lm_eval', 'matplotlib', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_stage_code_never_imports_the_engines():
    for path in (ROOT / "workflow").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("workflow/engines/") or rel in ("workflow/cli.py", "workflow/stages.py"):
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from workflow(\.engines| import .*\bengines\b)|import workflow\.engines)", text, re.M), rel
        if rel not in ("workflow/reads.py",):
            assert not re.search(r"^\s*from workflow(\.stages| import .*\bstages\b)", text, re.M), \
                f"{rel} imports the stage table: stages get their inputs from it, not the other way round"


def test_input_files_are_grouped_into_jobs_stably(tmp_path, monkeypatch):
    """Consecutive groups of sorted files; appended files fill the last group, then form new ones."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()

    def add(*names: str, size: int = 10) -> None:
        for name in names:
            (tmp_path / "raw" / name).write_bytes(b"x" * size)

    def groups(**curation) -> list[list[str]]:
        raw = {"sources": {"web": {"paths": ["raw/*.jsonl"], "domain": "web"}}, "trunk": {"checkpoints": [4]},
               "curation": curation}
        return [[f.removeprefix("raw/") for f in g] for g in stages.shard_groups(parse_params(raw), "web")]

    add(*(f"{i:02d}.jsonl" for i in range(7)))
    with readers.frozen_listings():  # one command: each source listed once, later files unseen until it ends
        before = groups(files_per_job=3)
        assert before == [["00.jsonl", "01.jsonl", "02.jsonl"], ["03.jsonl", "04.jsonl", "05.jsonl"], ["06.jsonl"]]
        add("07.jsonl", "08.jsonl", "09.jsonl")
        assert groups(files_per_job=3) == before
    after = groups(files_per_job=3)
    assert after[:2] == before[:2] and after[2:] == [["06.jsonl", "07.jsonl", "08.jsonl"], ["09.jsonl"]]
    add("10.jsonl", size=35)
    assert [len(g) for g in groups(bytes_per_job=30)] == [3, 3, 3, 2]  # a group closes once it holds 30 bytes
    assert stages.shard_parts(parse_params({"sources": {"web": {"paths": ["raw/*.jsonl"], "domain": "web"}},
                                            "trunk": {"checkpoints": [4]}}), "web") == [f"{k:05d}" for k in range(11)]
