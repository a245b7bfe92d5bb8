"""One engine at a time in a workspace: a Snakemake run and a DVC command never overlap.

DVC guards a workspace with two locks under `.dvc/tmp/`: `lock`, an exclusive `flock` that every
`dvc repro` / `commit` / `status` / `exp run` holds, except while a stage's command runs; and
`rwlock`, a JSON file naming the pid that reads or writes each stage's deps and outs, which covers
exactly that gap. A Snakemake run (its main process, from the Snakefile's `onstart`) takes the same
`flock` as DVC (`zc.lockfile`: exclusive, its pid written in the file) and keeps it until it exits,
after checking `rwlock` for a live DVC stage. So a DVC command started during a run fails with DVC's
"Unable to acquire lock" error, and a run started during a DVC command (or during another run)
stops before its first job, naming it. An `flock` ends with its process: a killed run leaves
nothing to unlock (Snakemake's own `.snakemake/locks` may still need `snakemake --unlock`).

Not covered: DVC's `core.hardlink_lock` mode (file systems without `flock`), which locks otherwise;
where `flock` fails for another reason than a holder, the run goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
from pathlib import Path

from workflow.io import pid_alive

DVC_TMP = ".dvc/tmp"

_held: list = []  # this process's lock (it lasts as long as the file stays open)


class WorkspaceBusy(Exception):
    """Another Snakemake run or a DVC command works in this workspace."""


def hold_against_dvc(root: str | Path = ".") -> None:
    """Take DVC's repo lock until this process exits; raise WorkspaceBusy when a DVC command or another
    run holds the workspace. Nothing to do outside a DVC repository or when this process holds it."""
    tmp = Path(root) / DVC_TMP
    if _held or not tmp.parent.is_dir():
        return
    tmp.mkdir(exist_ok=True)
    f = open(tmp / "lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        f.close()
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise WorkspaceBusy(_busy(_pid_in(tmp / "lock"))) from None
        print(f"warning: cannot lock {tmp / 'lock'} ({err.strerror}): a DVC command started during this run "
              f"would not be refused", file=sys.stderr)
        return
    stage_pid = _dvc_stage_running(tmp / "rwlock")
    if stage_pid is not None:
        f.close()
        raise WorkspaceBusy(_busy(stage_pid))
    f.truncate(0)
    f.write(f" {os.getpid()}\n")  # as zc.lockfile writes it
    f.flush()
    _held.append(f)


def holder(root: str | Path = ".") -> str | None:
    """Who holds the workspace (`dvc repro (pid N)`, `another snakemake run (pid N)` ...) without taking it;
    None when it is free or this process holds it. The probe is a shared `flock`, dropped at once: a DVC
    command that starts in that instant retries (DVC's lock does)."""
    tmp = Path(root) / DVC_TMP
    if _held or not tmp.is_dir():
        return None
    try:
        with open(tmp / "lock", "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return describe(_pid_in(tmp / "lock"))
    pid = _dvc_stage_running(tmp / "rwlock")
    return None if pid is None else describe(pid)


def _busy(pid: int | None) -> str:
    return f"{describe(pid)} is running in this workspace: wait for it to finish (or stop it), then rerun snakemake"


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # the holder has not written its pid yet
        return None


def _dvc_stage_running(rwlock: Path) -> int | None:
    """The pid of a live DVC process registered in `rwlock` (it runs a stage's command), else None.
    Entries of dead processes are stale (DVC drops them itself)."""
    try:
        table = json.loads(rwlock.read_text())
    except (OSError, ValueError):
        return None
    for mode in ("write", "read"):
        for infos in table.get(mode, {}).values():
            for info in infos if isinstance(infos, list) else [infos]:
                if pid_alive(int(info["pid"])):
                    return int(info["pid"])
    return None


def describe(pid: int | None) -> str:
    """`dvc repro (pid N)`, `another snakemake run (pid N)` or the like, from the process's command line."""
    if pid is None:
        return "a DVC command"
    try:
        argv = [Path(a).name for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if a]
    except OSError:
        return f"a DVC command (pid {pid})"
    for i, word in enumerate(argv):
        if word == "snakemake":
            return f"another snakemake run (pid {pid})"
        if word == "dvc":
            return f"{' '.join(argv[i:i + 2])} (pid {pid})"
    return f"a DVC command (pid {pid})"
