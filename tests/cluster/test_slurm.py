"""`snakemake --profile cluster` on a real two-node SLURM cluster (two slurmd on this machine), run to completion;
each trunk segment trains data-parallel across both nodes (one launcher per node, torchrun's c10d rendezvous,
gloo between the nodes) and its losses equal one process's.

Test-only flags: the test cluster has no accounting (status from `squeue`, no account), and two
group jobs (the data preparation, and the evaluations with the report) keep the run short: the
executor plugin adds 10 s to its poll interval after every poll that finds no finished job.
The trunk segments stay single jobs, as on a real cluster; their rule asks for two nodes and the executor's
`mpi` launch itself (`workflow.train.launch.slurm_resources`, through the stage table).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.study import micro_params
from tests.conftest import clone_study, copy_repo, run
from workflow import paths
from workflow.engines import snakemake as engine
from workflow.train import checkpoint as ckpt

pytestmark = pytest.mark.slow

TRUNK = {"cpus": 1, "mem_mb": 1500, "runtime": 7, "partition": "debug"}  # per node; model.parallel: 2 nodes
TWO_NODES = {"nproc_per_node": 1, "nodes": 2}  # two data-parallel replicas, one per node
STATUS_FLAGS = ["--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-keep-successful-logs",
                "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
TEST_FLAGS = [
    *STATUS_FLAGS,
    "--groups", *[f"{r}=prep" for r in ("curate_shard", "curate_split", "curate", "tokenizer", "tokenize")],
    *[f"{r}=score" for r in ("evaluate", "report")],
]


@pytest.fixture(scope="module")
def cluster_run(slurm, tmp_path_factory) -> tuple[Path, str]:
    params = micro_params()
    params["model"]["parallel"] = TWO_NODES
    params["resources"] = {"trunk": TRUNK}
    repo = copy_repo(tmp_path_factory.mktemp("cluster"), params)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    proc = run([sys.executable, "-m", "snakemake", "--profile", "cluster", *TEST_FLAGS], repo, timeout=480)
    return repo, proc.stdout + proc.stderr


def squeue(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """SLURM's own record of jobs (the test cluster keeps finished jobs for MinJobAge=600 s)."""
    fields = {"id": "%i", "name": "%j", "state": "%T", "cpus": "%C", "mem": "%m", "time": "%l", "partition": "%P",
              "nodes": "%N"}
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "|".join(fields.values())],
                         capture_output=True, text=True, check=True).stdout
    return {row[0]: dict(zip(fields, row)) for row in (line.split("|") for line in out.splitlines())}


def submissions(log: str) -> dict[str, Path]:
    """SLURM job id -> its log file, from Snakemake's 'submitted with SLURM jobid' lines."""
    return {m[0]: Path(m[1]) for m in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)}


def test_study_completes(cluster_run):
    repo, _ = cluster_run
    for model in ("main@4", "main@8"):
        assert json.loads((repo / paths.eval_file(model)).read_text())["model"] == model
    assert (repo / paths.report_file()).is_file()
    dry = run([sys.executable, "-m", "snakemake", "--dry-run"], repo).stdout  # plain snakemake: the local profile
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
    assert set(trunk_logs) == {"main_4", "main_8"} and len(set(trunk_logs.values())) == 2
    assert set(trunk_logs.values()) <= set(submissions(log))
    assert "python -m workflow trunk --trunk main --step 8" in (repo / ".snakemake/slurm_logs/rule_trunk/main_8" / f"{trunk_logs['main_8']}.log").read_text()


def test_params_resources_reach_sbatch(cluster_run):
    """`resources.trunk` in params.yaml became the trunk jobs' SLURM allocation; other jobs got the profile defaults."""
    repo, log = cluster_run
    records = squeue(list(submissions(log)))
    trunk_ids = {p.stem for p in (repo / ".snakemake/slurm_logs/rule_trunk").glob("*/*.log")}
    for job_id, rec in records.items():
        if job_id in trunk_ids:  # one CPU on each of the two nodes
            assert (rec["cpus"], rec["mem"], rec["time"], rec["partition"], rec["nodes"]) == \
                ("2", "1500M", "7:00", "debug", "n[1-2]"), rec
        else:  # group jobs: default-resources (mem_mb 4000, runtime 60) summed over their jobs
            assert rec["mem"].endswith("000M") and rec["time"].endswith(":00:00"), rec


def test_trunk_trains_across_two_nodes_as_one_process_does(cluster_run, tmp_path):
    """Each segment ran in one job on both nodes (a launcher per node, one rank each, gloo between them);
    the losses and grad norms equal a one-process run of the same segments, to 1e-5."""
    repo, _ = cluster_run
    for step in (4, 8):
        stage_log = (repo / engine.job_file("trunk", "logs", ".log").format(trunk="main", step=step)).read_text()
        assert "launching 2 processes: srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in stage_log, stage_log[-2000:]
        assert stage_log.count("--rdzv-backend=c10d") == 2 and "is_host=true" in stage_log and "is_host=false" in stage_log
    one = clone_study(repo, tmp_path / "one-process")
    params = yaml.safe_load((one / "params.yaml").read_text())
    params["model"]["parallel"] = {}
    (one / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "workflow", "dvc-yaml"], one)
    shutil.rmtree(one / paths.trunk_root("main"))
    for step in (4, 8):
        done = run([sys.executable, "-m", "workflow", "trunk", "--step", str(step)], one)
        assert "launching" not in done.stderr
        two_nodes, single = ckpt.read_log(repo / paths.trunk_dir("main", step)), ckpt.read_log(one / paths.trunk_dir("main", step))
        assert [r["step"] for r in two_nodes] == [r["step"] for r in single] == list(range(1, step + 1))
        assert [r["loss"] for r in two_nodes] == pytest.approx([r["loss"] for r in single], abs=1e-5)
        assert [r["grad_norm"] for r in two_nodes] == pytest.approx([r["grad_norm"] for r in single], rel=1e-5)


# --- walltime and preemption ------------------------------------------------------------------

SEGMENT, STEP_DELAY = 200, 0.5  # steps of the stopped segment, made to need ~100 s > its 1-minute walltime
STOPPED = re.compile(r"stopped by SLURM at step (\d+), saved; resume from (\d+)")
RESUMED = re.compile(rf"main@{SEGMENT}: resuming from \S+ \(step (\d+)\)")


def running_jobs(run_id: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", run_id, "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def stopped_run(slurm, cluster_run, tmp_path_factory) -> dict:
    """One trunk segment through `snakemake --profile cluster` with a 1-minute walltime (`resources.trunk.runtime`),
    requeued once (`scontrol requeue`, as a preemption does) while it trains, then stopped by its walltime: SLURM
    sends SIGTERM, waits KillWait, then SIGKILLs. Meanwhile the same segment trains uninterrupted on this host.
    It starts from a copy of the cluster study (same data: only its trunk settings change, so only trunk jobs run)."""
    params = micro_params()
    params["trunk"].update(checkpoints=[SEGMENT], save_interval=SEGMENT)  # no resume point but SIGTERM's
    params["resources"] = {"trunk": {"cpus": 1, "mem_mb": 1500, "runtime": 1, "partition": "debug"}}
    repo = clone_study(cluster_run[0], tmp_path_factory.mktemp("stopped") / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    reference = clone_study(repo, repo.parent / "uninterrupted")
    uninterrupted = subprocess.Popen([sys.executable, "-m", "workflow", "trunk", "--trunk", "main", "--step", str(SEGMENT)],
                                     cwd=reference, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target, stage_log = paths.trunk_dir("main", SEGMENT), repo / engine.job_file("trunk", "logs", ".log").format(trunk="main", step=SEGMENT)
    slow = {**os.environ, "ARBOR_FAULT_DELAY": f"train.step:{STEP_DELAY}"}  # a slow node: the job outlives its walltime
    with open(repo.parent / "snakemake.log", "w") as out:
        cluster = subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "cluster", *STATUS_FLAGS, target],
                                   cwd=repo, stdout=out, stderr=subprocess.STDOUT, text=True, env=slow)
    requeued, stops, resumes, deadline = None, [], [], time.monotonic() + 600
    try:  # each attempt rewrites the stage log: its lines are collected while it runs
        while cluster.poll() is None and time.monotonic() < deadline:
            text = stage_log.read_text() if stage_log.exists() else ""
            stops += [m[0] for m in STOPPED.finditer(text) if m[0] not in stops]
            resumes += [int(m[1]) for m in RESUMED.finditer(text) if int(m[1]) not in resumes]
            if requeued is None and re.search(rf"main@{SEGMENT} step \d+/", text):
                run_id = re.search(r"SLURM run ID: (\S+)", (repo.parent / "snakemake.log").read_text())[1]
                requeued = running_jobs(run_id)
                subprocess.run(["scontrol", "requeue", *requeued], check=True, capture_output=True)
            time.sleep(0.5)
        assert cluster.wait(timeout=10) == 0, (repo.parent / "snakemake.log").read_text()[-4000:]
    finally:
        if cluster.poll() is None:
            cluster.kill()
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stderr.read()[-3000:]
    log = (repo.parent / "snakemake.log").read_text()
    return {"repo": repo, "reference": reference, "log": log, "requeued": requeued, "jobs": submissions(log),
            "stops": stops, "resumes": resumes}


def test_requeue_and_walltime_stop_save_and_resume(stopped_run):
    """Each stop says in one line where it saved; the next run resumes from there; the weights, optimizer state
    and training log equal the uninterrupted run's, byte for byte."""
    repo, reference = stopped_run["repo"], stopped_run["reference"]
    assert stopped_run["requeued"], "the segment ended before it could be requeued"
    stops = [(int(m[1]), int(m[2])) for m in map(STOPPED.match, stopped_run["stops"])]
    print(f"stops {stopped_run['stops']}; resumed from {stopped_run['resumes']}; SLURM jobs {sorted(stopped_run['jobs'])}, "
          f"requeued {stopped_run['requeued']}")
    # the requeue, then the walltime (on a loaded machine the 2-minute retry may time out again)
    assert len(stops) >= 2 and all(a == b for a, b in stops) and stops == sorted(set(stops)), stopped_run["stops"]
    assert stopped_run["resumes"] == [a for a, _ in stops]  # every restart resumed from the last stop's save
    # each walltime's retry is a new job (the requeued one kept its id); the test reads each attempt's log while
    # it runs, and on a loaded machine an attempt can reach its walltime between two reads: more jobs than stops
    assert len(stopped_run["jobs"]) >= len(stops)
    for rel in ("checkpoint", "train_log.jsonl", "meta.json"):
        for mine in sorted((repo / paths.trunk_dir("main", SEGMENT)).glob(rel if rel != "checkpoint" else "checkpoint/*")):
            other = reference / mine.relative_to(repo)
            assert mine.read_bytes() == other.read_bytes(), f"{mine.relative_to(repo)} differs"
