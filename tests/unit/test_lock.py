"""workflow/lock.py against DVC's own lock code (zc.lockfile, the rwlock file), in-process: an `flock`
taken twice in one process conflicts like in two (each `open` is its own lock holder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import zc.lockfile

from workflow import lock


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "_held", [])
    (tmp_path / ".dvc/tmp").mkdir(parents=True)
    return tmp_path


def test_dvc_command_holds_the_workspace(workspace):
    dvc = zc.lockfile.LockFile(str(workspace / ".dvc/tmp/lock"))  # what `dvc repro` takes
    with pytest.raises(lock.WorkspaceBusy, match=r"^a DVC command \(pid \d+\) is running in this workspace"):
        lock.hold_against_dvc(workspace)
    dvc.close()
    lock.hold_against_dvc(workspace)
    with pytest.raises(zc.lockfile.LockError):  # now DVC cannot start
        zc.lockfile.LockFile(str(workspace / ".dvc/tmp/lock"))


def test_dvc_stage_running(workspace):
    """`dvc repro` releases its lock while a stage's command runs; its rwlock entry stands for it."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rwlock = workspace / ".dvc/tmp/rwlock"
    entry = {"pid": int(dead.stdout), "cmd": "dvc repro"}
    rwlock.write_text(json.dumps({"write": {str(workspace / "artifacts/x"): entry}, "read": {}}))
    lock.hold_against_dvc(workspace)  # a stale entry (its process is gone) does not count
    lock._held.pop().close()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rwlock.write_text(json.dumps({"write": {}, "read": {"params.yaml": [{"pid": live.pid, "cmd": "dvc repro"}]}}))
        with pytest.raises(lock.WorkspaceBusy, match=rf"\(pid {live.pid}\) is running in this workspace"):
            lock.hold_against_dvc(workspace)
    finally:
        live.kill()
        live.wait()


def test_outside_a_dvc_repository(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "_held", [])
    lock.hold_against_dvc(tmp_path)
    assert not lock._held and not (tmp_path / ".dvc").exists()


@pytest.mark.parametrize("argv, said", [(["dvc", "repro", "-f"], "dvc repro"), (["snakemake", "--cores", "2"], "another snakemake run")])
def test_describe_names_the_command(argv, said):
    proc = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(30)", *argv],
                            stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # started: its command line is its own
        assert lock.describe(proc.pid) == f"{said} (pid {proc.pid})"
    finally:
        proc.kill()
        proc.wait()
    assert lock.describe(None) == "a DVC command"


def test_holder_names_who_holds_the_workspace_without_taking_it(workspace):
    assert lock.holder(workspace) is None
    dvc = zc.lockfile.LockFile(str(workspace / ".dvc/tmp/lock"))
    assert lock.holder(workspace) == f"a DVC command (pid {os.getpid()})"  # this process: not dvc by name
    dvc.close()
    assert lock.holder(workspace) is None
    zc.lockfile.LockFile(str(workspace / ".dvc/tmp/lock")).close()  # the probe left nothing held
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (workspace / ".dvc/tmp/rwlock").write_text(json.dumps({"write": {"artifacts/params": {"pid": live.pid, "cmd": "dvc repro"}}}))
        assert lock.holder(workspace) == f"a DVC command (pid {live.pid})"
    finally:
        live.kill()
        live.wait()
