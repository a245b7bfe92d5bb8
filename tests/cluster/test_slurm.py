"""`snakemake --profile profiles/cluster` on a real one-node SLURM cluster, run to completion.

Test-only flags: the test cluster has no accounting (status from `squeue`, no account), and two
group jobs (the data preparation, and the evaluations with the report) keep the run short: the
executor plugin adds 10 s to its poll interval after every poll that finds no finished job.
The trunk segments stay single jobs, as on a real cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.study import micro_params
from tests.conftest import copy_repo, run
from workflow import paths

pytestmark = pytest.mark.slow

TRUNK = {"cpus": 2, "mem_mb": 1500, "runtime": 7, "partition": "debug"}
TEST_FLAGS = [
    "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-keep-successful-logs",
    "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
    "--groups", *[f"{r}=prep" for r in ("curate_shard", "curate_split", "curate", "tokenizer", "tokenize")],
    *[f"{r}=score" for r in ("evaluate", "report")],
]


@pytest.fixture(scope="module")
def cluster_run(slurm, tmp_path_factory) -> tuple[Path, str]:
    params = micro_params()
    params["resources"] = {"trunk": TRUNK}
    repo = copy_repo(tmp_path_factory.mktemp("cluster"), params)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    proc = run([sys.executable, "-m", "snakemake", "--profile", "profiles/cluster", *TEST_FLAGS], repo, timeout=480)
    return repo, proc.stdout + proc.stderr


def squeue(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """SLURM's own record of jobs (the test cluster keeps finished jobs for MinJobAge=600 s)."""
    fields = {"id": "%i", "name": "%j", "state": "%T", "cpus": "%C", "mem": "%m", "time": "%l", "partition": "%P"}
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "|".join(fields.values())],
                         capture_output=True, text=True, check=True).stdout
    return {row[0]: dict(zip(fields, row)) for row in (line.split("|") for line in out.splitlines())}


def submissions(log: str) -> dict[str, Path]:
    """SLURM job id -> its log file, from Snakemake's 'submitted with SLURM jobid' lines."""
    return {m[0]: Path(m[1]) for m in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)}


def test_study_completes(cluster_run):
    repo, _ = cluster_run
    for model in ("trunk-4", "trunk-8"):
        assert json.loads((repo / paths.eval_file(model)).read_text())["model"] == model
    assert (repo / paths.report_file()).is_file()
    dry = run([sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2", "--dry-run"], repo).stdout
    assert "Nothing to be done" in dry


def test_every_job_went_through_slurm(cluster_run):
    repo, log = cluster_run
    run_id = re.search(r"SLURM run ID: (\S+)", log)[1]
    jobs = submissions(log)
    records = squeue(list(jobs))
    assert set(records) == set(jobs) and len(jobs) >= 4  # at least: prep group, two trunk segments, score group
    assert {r["state"] for r in records.values()} == {"COMPLETED"}
    assert {r["name"] for r in records.values()} == {run_id}
    assert set(re.findall(r"^localrule (\w+):", log, flags=re.M)) <= {"all"}, "no job ran on the submitting host"
    ran_in_slurm = set()
    for job_id, slurm_log in jobs.items():
        assert slurm_log.is_file() and slurm_log.stem == job_id
        ran_in_slurm |= set(re.findall(r"^rule (\w+):", slurm_log.read_text(), flags=re.M))
    rules = set(re.findall(r"^\s*rule (\w+):", log, flags=re.M))  # group members are indented
    assert {"curate", "tokenize", "trunk", "evaluate", "report"} <= rules <= ran_in_slurm


def test_each_trunk_segment_is_its_own_job(cluster_run):
    repo, log = cluster_run
    trunk_logs = {p.parent.name: p.stem for p in (repo / ".snakemake/slurm_logs/rule_trunk").glob("*/*.log")}
    assert set(trunk_logs) == {"4", "8"} and len(set(trunk_logs.values())) == 2
    assert set(trunk_logs.values()) <= set(submissions(log))
    assert "python -m workflow trunk --step 8" in (repo / ".snakemake/slurm_logs/rule_trunk/8" / f"{trunk_logs['8']}.log").read_text()


def test_params_resources_reach_sbatch(cluster_run):
    """`resources.trunk` in params.yaml became the trunk jobs' SLURM allocation; other jobs got the profile defaults."""
    repo, log = cluster_run
    records = squeue(list(submissions(log)))
    trunk_ids = {p.stem for p in (repo / ".snakemake/slurm_logs/rule_trunk").glob("*/*.log")}
    for job_id, rec in records.items():
        if job_id in trunk_ids:
            assert (rec["cpus"], rec["mem"], rec["time"], rec["partition"]) == ("2", "1500M", "7:00", "debug"), rec
        else:  # group jobs: default-resources (mem_mb 4000, runtime 60) summed over their jobs
            assert rec["mem"].endswith("000M") and rec["time"].endswith(":00:00"), rec
