"""Multi-process training: a training stage re-runs itself under `torchrun` (and, across nodes, `srun`).

`python -m workflow trunk --step N` with `model.parallel.nproc_per_node * nodes > 1` replaces the current
process (so signals from Snakemake or SLURM reach the launcher, which forwards them to the ranks) by:

* one node: `torchrun --standalone --nproc-per-node P -m workflow trunk --step N` (a private rendezvous on a
  free port, so concurrent jobs never collide);
* several nodes, only inside a SLURM job, in two hops:
  1. in the job's batch step (what snakemake-executor-plugin-slurm runs, as it is, for a rule that declares
     an `mpi` resource: `slurm_resources`), `srun --nodes N --ntasks N --ntasks-per-node 1` starts the same
     command once per node, with this host (the job's first node) as the rendezvous endpoint;
  2. in each task of that step (SLURM_STEP_ID and SLURM_NODEID set), torchrun with megatron users' usual
     c10d rendezvous: `--nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint <first node>:<port>
     --rdzv-id <job id>`, the store hosted on node 0.
  A hand-written `sbatch --nodes N` script takes the same two hops; a user who already runs the stage once
  per node (`srun --ntasks-per-node=1 python -m workflow ...`) starts at hop 2.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping

from workflow.errors import StageError
from workflow.params import Parallel

MASTER_PORT = 29500
NODE_LAUNCHER_FLAGS = ("--ntasks-per-node=1", "--kill-on-bad-exit=1")


class LaunchError(StageError):
    """The layout in `model.parallel` cannot be launched from here; the message says why."""


def world_size(parallel: Parallel) -> int:
    return parallel.nproc_per_node * parallel.nodes


def slurm_resources(nodes: int, gpus: bool) -> dict:
    """Snakemake resources that make snakemake-executor-plugin-slurm run a `nodes`-node training job's command as
    it is on the first node (an `mpi` job: no `srun -n1` wrapper, which would confine it to one node) in an
    allocation of one task per node (`--ntasks=nodes`); `tasks_per_gpu=0` stops the plugin from turning
    `tasks` into `--ntasks-per-gpu`. Empty for one node."""
    if nodes <= 1:
        return {}
    return {"mpi": "srun", "tasks": nodes} | ({"tasks_per_gpu": 0} if gpus else {})


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job -o <id>` as key=value pairs (NumNodes, CPUs/Task, TRES, ...); {} if unavailable."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(token.split("=", 1) for token in out.stdout.split() if "=" in token) if out.returncode == 0 else {}


def first_slurm_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list (`scontrol show hostnames` expands `node[01-04]`)."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def rendezvous_port(env: Mapping[str, str]) -> int:
    return int(env.get("MASTER_PORT", MASTER_PORT + int(env["SLURM_JOB_ID"]) % 10_000))


def node_launchers(parallel: Parallel, argv: list[str], env: Mapping[str, str],
                   info: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Hop 1: (`srun` command, environment additions) that start `python -m workflow <argv>` once per node.
    `info`: the job's `job_info` (the executor plugin strips the job's SLURM_* variables from the command's
    environment, and `srun` inside a job no longer inherits --cpus-per-task or GPUs)."""
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or info.get("NumNodes", parallel.nodes))
    if nodes != parallel.nodes:
        raise LaunchError(f"model.parallel.nodes = {parallel.nodes} but the SLURM job has {nodes} nodes")
    cmd = ["srun", f"--nodes={parallel.nodes}", f"--ntasks={parallel.nodes}", *NODE_LAUNCHER_FLAGS]
    cpus = env.get("SLURM_CPUS_PER_TASK") or info.get("CPUs/Task")
    if cpus and cpus.isdigit():
        cmd.append(f"--cpus-per-task={cpus}")
    if "gres/gpu" in info.get("TRES", "") or env.get("SLURM_GPUS_ON_NODE"):
        cmd.append(f"--gpus-per-node={parallel.nproc_per_node}")
    host = env.get("MASTER_ADDR") or socket.gethostname()  # the batch step runs on the job's first node
    return cmd + [sys.executable, "-m", "workflow", *argv], {"MASTER_ADDR": host, "MASTER_PORT": str(rendezvous_port(env))}


def node_torchrun(parallel: Parallel, argv: list[str], env: Mapping[str, str]) -> list[str]:
    """Hop 2: this node's torchrun, meeting the other nodes' at the c10d rendezvous hosted by node 0."""
    if int(env.get("SLURM_STEP_NUM_NODES", 0)) != parallel.nodes or int(env.get("SLURM_STEP_NUM_TASKS", 0)) != parallel.nodes:
        raise LaunchError(f"model.parallel.nodes = {parallel.nodes} but this SLURM job step runs "
                          f"{env.get('SLURM_STEP_NUM_TASKS')} task(s) on {env.get('SLURM_STEP_NUM_NODES')} node(s): "
                          "run the stage as the job's own command (a Snakemake rule with the resources of "
                          "`workflow.train.launch.slurm_resources`), or once per node (`srun --ntasks-per-node=1`)")
    host = env.get("MASTER_ADDR") or first_slurm_host(env["SLURM_STEP_NODELIST"] if "SLURM_STEP_NODELIST" in env
                                                     else env["SLURM_JOB_NODELIST"])
    node = int(env["SLURM_NODEID"])
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={parallel.nodes}",
            f"--nproc-per-node={parallel.nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={host}:{rendezvous_port(env)}", f"--rdzv-id={env['SLURM_JOB_ID']}",
            f"--rdzv-conf=is_host={'true' if node == 0 else 'false'}", "--max-restarts=0",
            "-m", "workflow", *argv]


def launch_command(parallel: Parallel, argv: list[str], env: Mapping[str, str],
                   info: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]] | None:
    """The command (and environment additions) that runs `python -m workflow <argv>` with this layout, or None
    when this process should train itself (one process, or already a torchrun rank)."""
    if world_size(parallel) == 1 or "TORCHELASTIC_RUN_ID" in env or "RANK" in env:
        return None
    if parallel.nodes == 1:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={parallel.nproc_per_node}",
                "--standalone", "-m", "workflow", *argv], {}
    if "SLURM_JOB_ID" not in env:
        raise LaunchError(f"model.parallel.nodes = {parallel.nodes} needs SLURM: run the stage as a SLURM job's "
                          "command (`snakemake --profile cluster`, or `sbatch --nodes N`), or once per node "
                          "(`srun --ntasks-per-node=1 ...`), or start torchrun on each node yourself")
    if "SLURM_STEP_ID" in env:  # a task of a job step: one launcher per node (hop 2)
        return node_torchrun(parallel, argv, env), {}
    return node_launchers(parallel, argv, env, job_info(env["SLURM_JOB_ID"]) if info is None else info)


def torchrun_command(parallel: Parallel, argv: list[str], env: Mapping[str, str]) -> list[str] | None:
    """The launcher command line alone (see `launch_command`)."""
    plan = launch_command(parallel, argv, env, info={})
    return plan[0] if plan else None


def relaunch_if_needed(parallel: Parallel, argv: list[str]) -> None:
    """Replace this process by the launcher when the layout needs several processes; return otherwise.

    Each rank gets `cores / nproc_per_node` intra-op threads (`ARBOR_THREADS`) unless already set."""
    plan = launch_command(parallel, argv, os.environ)
    if plan is None:
        return
    cmd, extra = plan
    env = dict(os.environ) | extra
    if cmd[0] != "srun":  # the per-node launchers pick their own threads
        env.setdefault("ARBOR_THREADS", str(max(1, len(os.sched_getaffinity(0)) // parallel.nproc_per_node)))
        env.setdefault("OMP_NUM_THREADS", env["ARBOR_THREADS"])
    print(f"launching {world_size(parallel)} processes: {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}",
          file=sys.stderr, flush=True)
    executable = cmd[0] if os.path.isabs(cmd[0]) else _which(cmd[0])
    os.execve(executable, cmd, env)


def _which(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if path is None:
        raise LaunchError(f"`{name}` is not on PATH")
    return path
