"""Launch command lines: torchrun on one node; across nodes, one launcher per node through srun, then torchrun's
c10d rendezvous hosted by node 0; the Snakemake resources that keep the SLURM executor from wrapping a
multi-node job in `srun -n1`. (The real two-node run: tests/cluster/test_slurm.py.)"""

from __future__ import annotations

import sys

import pytest

from workflow.params import Parallel
from workflow.train.launch import LaunchError, launch_command, slurm_resources

ARGV = ["--params", "p.yaml", "trunk", "--step", "8"]
TWO_NODES = Parallel(nproc_per_node=2, nodes=2)
# What snakemake-executor-plugin-slurm leaves of the job's environment for the command it runs (an `mpi` job)
BATCH_STEP = {"SLURM_JOB_ID": "4321", "SLURM_JOBID": "4321", "SLURM_SUBMIT_DIR": "/work"}
JOB = {"NumNodes": "2", "CPUs/Task": "6", "TRES": "cpu=12,mem=8G,node=2,billing=12,gres/gpu=4"}
NODE_TASK = {"SLURM_JOB_ID": "4321", "SLURM_STEP_ID": "0", "SLURM_NODEID": "1", "SLURM_STEP_NUM_NODES": "2",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "node[07-08]", "MASTER_ADDR": "node07",
             "MASTER_PORT": "33821"}


def test_one_process_or_a_rank_trains_itself():
    assert launch_command(Parallel(), ARGV, {}) is None
    assert launch_command(Parallel(tp=2, nproc_per_node=2), ARGV, {"RANK": "0", "WORLD_SIZE": "2"}) is None
    assert launch_command(TWO_NODES, ARGV, {"TORCHELASTIC_RUN_ID": "x", **NODE_TASK}) is None


def test_one_node_is_standalone_torchrun():
    cmd, env = launch_command(Parallel(tp=2, nproc_per_node=2), ARGV, {})
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                   "-m", "workflow", *ARGV] and env == {}


def test_batch_step_starts_one_launcher_per_node():
    cmd, env = launch_command(TWO_NODES, ARGV, BATCH_STEP, info=JOB)
    assert cmd[:1] == ["srun"] and cmd[-len(ARGV) - 3:] == [sys.executable, "-m", "workflow", *ARGV]
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=6",
            "--gpus-per-node=2"} <= set(cmd)
    assert env["MASTER_PORT"] == "33821" and env["MASTER_ADDR"]  # this host: the batch step runs on node 0
    cpu_job = {"NumNodes": "2", "CPUs/Task": "1", "TRES": "cpu=2,node=2"}
    assert not [a for a in launch_command(TWO_NODES, ARGV, BATCH_STEP, info=cpu_job)[0] if a.startswith("--gpus")]
    with pytest.raises(LaunchError, match="3 nodes"):
        launch_command(TWO_NODES, ARGV, BATCH_STEP, info=JOB | {"NumNodes": "3"})


def test_each_node_runs_torchrun_with_c10d_rendezvous_on_node_0():
    cmd, _ = launch_command(TWO_NODES, ARGV, NODE_TASK)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-len(ARGV) - 2:] == ["-m", "workflow", *ARGV]
    assert {"--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node07:33821",
            "--rdzv-id=4321", "--rdzv-conf=is_host=false"} <= set(cmd)
    first, _ = launch_command(TWO_NODES, ARGV, NODE_TASK | {"SLURM_NODEID": "0"})
    assert "--rdzv-conf=is_host=true" in first


def test_refuses_what_cannot_span_the_nodes():
    with pytest.raises(LaunchError, match="needs SLURM"):
        launch_command(TWO_NODES, ARGV, {})
    # the executor's `srun -n1` wrapper (a rule without the `mpi` resource): one task on one node
    wrapped = NODE_TASK | {"SLURM_NODEID": "0", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "1"}
    with pytest.raises(LaunchError, match="1 task\\(s\\) on 1 node\\(s\\).*slurm_resources"):
        launch_command(TWO_NODES, ARGV, wrapped)


def test_slurm_resources_make_the_executor_run_the_command_as_it_is():
    assert slurm_resources(1, gpus=True) == {}
    assert slurm_resources(2, gpus=False) == {"mpi": "srun", "tasks": 2}
    assert slurm_resources(2, gpus=True) == {"mpi": "srun", "tasks": 2, "tasks_per_gpu": 0}


class _Resources(dict):
    __getattr__ = dict.__getitem__


def sbatch_line(resources: dict, threads: int = 4) -> str:
    """The sbatch command snakemake-executor-plugin-slurm builds for a job with these resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    job = SimpleNamespace(resources=_Resources(resources), threads=threads)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "trunk", "account": "", "partition": "",
              "workdir": "/work"}
    return get_submit_command(job, params)


@pytest.mark.parametrize("gpus", [False, True], ids=["cpu", "gpu"])
def test_slurm_executor_allocates_one_task_per_node(gpus):
    """The resources, as the executor plugin turns them into sbatch flags: two nodes, one task on each."""
    rules = {"nodes": 2, "mem_mb": 1000, **({"gpu": 8} if gpus else {})}  # what rules/common.smk asks for already
    line = sbatch_line(rules | slurm_resources(2, gpus))
    assert "--nodes=2" in line and "--ntasks=2" in line and "--ntasks-per-gpu" not in line, line
    assert "--ntasks=1" in sbatch_line({"nodes": 2, "mem_mb": 1000})  # without them: one task for two nodes
