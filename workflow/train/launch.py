"""Multi-process training: a training stage re-runs itself under `torchrun` when its layout needs it.

`python -m workflow trunk --step N` with `model.parallel.nproc_per_node * nodes > 1` becomes
`python -m torch.distributed.run <layout> -m workflow trunk --step N` (same arguments), replacing the
current process so signals (Snakemake, SLURM) reach torchrun, which forwards them to the ranks.

* One node: `--standalone` (a private rendezvous on a free port, so concurrent jobs never collide).
* Several nodes: only under SLURM, one launcher per node (`srun --ntasks-per-node=1 ...`): the node
  rank is `SLURM_NODEID` and the master is the first host of `SLURM_JOB_NODELIST`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from workflow.errors import StageError
from workflow.params import Parallel

MASTER_PORT = 29500


class LaunchError(StageError):
    """The layout in `model.parallel` cannot be launched from here; the message says why."""


def world_size(parallel: Parallel) -> int:
    return parallel.nproc_per_node * parallel.nodes


def first_slurm_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list (`scontrol show hostnames` expands `node[01-04]`)."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def torchrun_command(parallel: Parallel, argv: list[str], env: Mapping[str, str]) -> list[str] | None:
    """The torchrun command line that runs `python -m workflow <argv>` with this layout, or None when
    this process should train itself (one process, or already a torchrun rank)."""
    if world_size(parallel) == 1 or "TORCHELASTIC_RUN_ID" in env or "RANK" in env:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={parallel.nproc_per_node}"]
    if parallel.nodes == 1:
        cmd.append("--standalone")
    else:
        if "SLURM_JOB_ID" not in env:
            raise LaunchError(f"model.parallel.nodes = {parallel.nodes} needs SLURM: run the stage under "
                              "`srun --nodes N --ntasks-per-node=1` (or start torchrun on each node yourself)")
        nnodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
        if nnodes != parallel.nodes:
            raise LaunchError(f"model.parallel.nodes = {parallel.nodes} but the SLURM job has {nnodes} nodes")
        host = env.get("MASTER_ADDR") or first_slurm_host(env["SLURM_JOB_NODELIST"])
        port = int(env.get("MASTER_PORT", MASTER_PORT + int(env["SLURM_JOB_ID"]) % 10_000))
        cmd += [f"--nnodes={parallel.nodes}", f"--node-rank={env['SLURM_NODEID']}",
                f"--master-addr={host}", f"--master-port={port}"]
    return cmd + ["-m", "workflow", *argv]


def relaunch_if_needed(parallel: Parallel, argv: list[str]) -> None:
    """Replace this process by torchrun when the layout needs several processes; return otherwise.

    Each rank gets `cores / nproc_per_node` intra-op threads (`ARBOR_THREADS`) unless already set."""
    cmd = torchrun_command(parallel, argv, os.environ)
    if cmd is None:
        return
    env = dict(os.environ)
    env.setdefault("ARBOR_THREADS", str(max(1, len(os.sched_getaffinity(0)) // parallel.nproc_per_node)))
    env.setdefault("OMP_NUM_THREADS", env["ARBOR_THREADS"])
    print(f"launching {world_size(parallel)} processes: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execve(sys.executable, cmd, env)
