"""`resources.<stage>` in params.yaml: validated, turned into the SLURM executor's resources, never tracked."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from tests.conftest import TINY_PARAMS, copy_repo, run
from workflow import stages
from workflow.engines import dvc as dvc_engine
from workflow.params import ParamsError, parse_params

GPU_STUDY = {
    "model": {"backend": "gpu", "parallel": {"nproc_per_node": 4, "nodes": 2}},
    "resources": {
        "trunk": {"cpus": 16, "mem_mb": 64000, "runtime": 720, "partition": "gpu", "account": "proj", "constraint": "h100"},
        "decay": {"gpus": 2, "nodes": 1},
        "evaluate": {"mem_mb": 8000},
    },
}


def tiny(**sections) -> dict:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    for key, value in sections.items():
        params[key] = {**params.get(key, {}), **value} if isinstance(value, dict) else value
    return params


def dry_run_jobs(repo) -> dict[str, list[dict[str, str]]]:
    """rule -> [{resource: value, 'threads': n}] of every job, from a dry run of the cluster profile."""
    out = run([sys.executable, "-m", "snakemake", "--profile", "profiles/cluster", "--dry-run", "--cores", "64"], repo).stdout
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=rule \w+:)", out)[1:]:
        rule = re.match(r"rule (\w+):", block)[1]
        res = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block)[1].split(", "))
        res["threads"] = (re.search(r"threads: (\d+)", block) or [None, "1"])[1]
        jobs.setdefault(rule, []).append(res)
    return jobs


def test_cluster_profile_requests_what_params_say(tmp_path):
    params = tiny(model=GPU_STUDY["model"], resources=GPU_STUDY["resources"], trunk={"global_batch_size": 32})
    repo = copy_repo(tmp_path, params)
    jobs = dry_run_jobs(repo)
    for trunk in jobs["trunk"]:  # nodes and GPUs per node from model.parallel: --nodes=2 --gpus=8
        assert {k: trunk[k] for k in ("nodes", "gpu", "mem_mb", "runtime", "slurm_partition", "slurm_account", "constraint", "threads")} \
            == {"nodes": "2", "gpu": "8", "mem_mb": "64000", "runtime": "720", "slurm_partition": "gpu",
                "slurm_account": "proj", "constraint": "h100", "threads": "16"}
    for decay in jobs["decay"]:  # explicit values win over model.parallel
        assert (decay["nodes"], decay["gpu"], decay["mem_mb"], decay["runtime"]) == ("1", "2", "4000", "60")
    assert {j["mem_mb"] for j in jobs["evaluate"]} == {"8000"}
    for rule in ("curate", "tokenizer", "merge", "report"):  # unset: the profile's default-resources, no GPU
        for job in jobs[rule]:
            assert (job["mem_mb"], job["runtime"], "gpu" in job, "nodes" in job) == ("4000", "60", False, False), (rule, job)


def test_resources_are_not_tracked():
    """What DVC tracks (dvc.yaml, the resolved params) is the same with and without resources; the
    invalidation matrix (tests/integration/test_invalidation.py) shows neither engine re-runs for them."""
    plain = parse_params(tiny())
    with_resources = parse_params(tiny(resources=GPU_STUDY["resources"]))
    assert dvc_engine.render(plain) == dvc_engine.render(with_resources)
    assert dvc_engine.stage_files(plain) == dvc_engine.stage_files(with_resources)


@pytest.mark.parametrize("resources, key", [
    ({"trunc": {"cpus": 2}}, "resources.trunc"),
    ({"trunk": {"gpus": -1}}, "resources.trunk.gpus"),
    ({"trunk": {"runtime": "1h"}}, "resources.trunk.runtime"),
    ({"decay": {"mem": 1000}}, "resources.decay.mem"),
])
def test_bad_resources_name_the_key(resources, key):
    with pytest.raises(ParamsError, match=re.escape(key)):
        stages.check_resources(parse_params(tiny(resources=resources)))  # what the CLI and common.smk run first
