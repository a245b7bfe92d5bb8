"""A real SLURM cluster for tests on this one machine: Debian's munge, slurmctld and one slurmd per node,
started as root. The nodes (`n1`, `n2`, ...) are separate slurmd daemons (`slurmd -N <name>`, each on its
own port, spool dir, pid and log file) on this host, so a job can span two "nodes" for real: SLURM
allocates both, `srun` starts one task on each, and the tasks talk over TCP as on a cluster.

Recipe: /work/shared/notes/slurm-local.md. `slurm.conf` must sit at its default path
(`/etc/slurm/slurm.conf`): the `srun` that Snakemake's job step runs inside each job reads no
`SLURM_CONF` from the submitting shell. An existing file there is put back on `stop()`.
Every daemon this module starts is stopped by the pid in its pid file; a munged that was
already running is used and left alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.apt import Unavailable, ensure  # noqa: F401 - Unavailable is this module's error too

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "srun"]
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_PID = Path("/run/munge/munged.pid")
LOCK = Path("/tmp/arbor-test-slurm.lock")
SLURMD_PORT = 17001  # node i listens on SLURMD_PORT + i  # one test cluster per machine: the config path is global




class StartError(RuntimeError):
    """A daemon did not come up; the message holds the tail of its log."""


def _sh(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def install() -> None:
    """apt-get the Debian packages when a binary is missing; Unavailable when that cannot be done."""
    ensure(BINARIES, PACKAGES)


def node_names(count: int) -> list[str]:
    return [f"n{i}" for i in range(1, count + 1)]


def slurm_conf(state: Path, nodes: int = 2) -> str:
    """`nodes` nodes on this host, each with its CPUs and memory as `slurmd -C` reports them (so the cores are
    shared), partition `debug` over all of them."""
    host = socket.gethostname().split(".")[0]
    hardware = _sh(["slurmd", "-C"]).stdout.splitlines()[0].split(" ", 1)[1]  # CPUs=... RealMemory=...
    node_lines = [f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={SLURMD_PORT + i} {hardware}"
                  for i, name in enumerate(node_names(nodes))]
    return "\n".join([
        "ClusterName=arbor-test",
        f"SlurmctldHost={host}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"StateSaveLocation={state}/ctld",
        f"SlurmdSpoolDir={state}/d/%n",
        f"SlurmctldPidFile={state}/slurmctld.pid",
        f"SlurmdPidFile={state}/slurmd-%n.pid",
        f"SlurmctldLogFile={state}/slurmctld.log",
        f"SlurmdLogFile={state}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "MinJobAge=600",  # finished jobs stay visible to `squeue`, the status command without accounting
        "AuthInfo=cred_expire=10",  # a requeued job may start again after 11 s (default: 121 s)
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SchedulerParameters=sched_interval=1",
        *node_lines,
        f"PartitionName=debug Nodes={','.join(node_names(nodes))} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


class LocalSlurm:
    """`start()` brings the cluster up (installing packages where missing), `stop()` takes it down."""

    def __init__(self, state: Path, nodes: int = 2):
        self.state, self.nodes = state, node_names(nodes)
        self.started: list[tuple[str, Path]] = []  # (daemon, pid file) in start order
        self._conf_backup: Path | None = None  # the slurm.conf found at SLURM_CONF, put back by stop()
        self._conf_written = False
        self._lock = None

    def start(self, timeout: float = 60) -> "LocalSlurm":
        if os.environ.get("ARBOR_TEST_SLURM_UNAVAILABLE"):  # plays a machine without SLURM (test_unavailable.py)
            raise Unavailable(os.environ["ARBOR_TEST_SLURM_UNAVAILABLE"])
        self._lock = open(LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # waits for another test session's cluster
        try:
            install()
            self._start_munge()
            for sub in ("ctld", *(f"d/{name}" for name in self.nodes)):
                (self.state / sub).mkdir(parents=True, exist_ok=True)
            if SLURM_CONF.exists():
                self._conf_backup = self.state / "slurm.conf.orig"
                shutil.copy2(SLURM_CONF, self._conf_backup)
            SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
            SLURM_CONF.write_text(slurm_conf(self.state, len(self.nodes)))
            self._conf_written = True
            self._daemon("slurmctld", ["slurmctld", "-i"], self.state / "slurmctld.pid")
            for name in self.nodes:
                self._daemon(f"slurmd {name}", ["slurmd", "-N", name], self.state / f"slurmd-{name}.pid")
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        pid = _read_pid(MUNGE_PID)
        if pid and _alive(pid):
            return
        if not Path("/etc/munge/munge.key").exists():
            _sh(["runuser", "-u", "munge", "--", "mungekey", "--create"])
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
            if Path(d).exists():
                shutil.chown(d, "munge", "munge")
        self._daemon("munged", ["runuser", "-u", "munge", "--", "munged"], MUNGE_PID)

    def _daemon(self, name: str, cmd: list[str], pid_file: Path) -> None:
        proc = _sh(cmd, timeout=60)
        if proc.returncode != 0:
            raise StartError(f"{name} did not start ({proc.returncode}): {proc.stderr.strip()[-500:]}{self._logs()}")
        for _ in range(100):
            pid = _read_pid(pid_file)
            if pid and _alive(pid):
                self.started.append((name, pid_file))
                return
            time.sleep(0.1)
        raise StartError(f"{name} wrote no live pid to {pid_file}{self._logs()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline, states = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            states = dict(line.split() for line in _sh(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=30).stdout.splitlines())
            if set(states) == set(self.nodes) and all(s.startswith("idle") for s in states.values()):
                return
            time.sleep(0.5)
        raise StartError(f"the nodes did not become idle in {timeout:.0f} s (sinfo: {states!r}){self._logs()}")

    def _logs(self) -> str:
        tails = []
        for log in ("slurmctld.log", *(f"slurmd-{name}.log" for name in self.nodes)):
            path = self.state / log
            if path.exists():
                tails.append(f"\n--- {log}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "".join(tails)

    def stop(self, timeout: float = 30) -> None:
        for name, pid_file in reversed(self.started):
            pid = _read_pid(pid_file)
            if pid is None or not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.started.clear()
        if self._conf_backup is not None:
            shutil.copy2(self._conf_backup, SLURM_CONF)
        elif self._conf_written:
            SLURM_CONF.unlink(missing_ok=True)
        self._conf_backup, self._conf_written = None, False
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
