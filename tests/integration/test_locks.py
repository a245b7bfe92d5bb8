"""Concurrent runs on one workspace: whichever engine starts second refuses, naming the first, and the
first finishes with complete results (workflow/lock.py, Snakemake's `.snakemake/locks`, DVC's locks).

Real runs of the tiny study's prose curate_shard job. The first run is paused (SIGSTOP to its whole process
tree, as a loaded machine might) while its rivals start, so they meet it running however fast the job is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from workflow import paths

pytestmark = pytest.mark.slow

PROSE_SPLIT = paths.curate_split_dir("prose")                 # the prose shard job, then the split
CODE_SHARD = paths.curate_shard_dir("code", 0)                 # shares no file with the prose jobs
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "1"]
DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture
def start(repo):
    """`start(cmd)`: run `cmd` in the repo in the background; whatever still runs at the end is killed."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def launch(cmd: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen(cmd, cwd=repo, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return procs[-1]

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def wait_for(condition, what: str, timeout: float = 120, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


@contextmanager
def paused(proc: subprocess.Popen):
    """Stop `proc` and its descendants (they keep their locks and stay alive), continue them on exit."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in tree:
            p.send_signal(signal.SIGCONT)


def leftovers(repo: Path) -> list[Path]:
    """What an interrupted or corrupted run leaves: temporaries, Snakemake incomplete markers or locks."""
    return [*(repo / "artifacts").rglob("*.tmp-*"), *(repo / ".snakemake/incomplete").rglob("*"),
            *(repo / ".snakemake/locks").rglob("*")]


def test_snakemake_first_then_dvc_first(repo, start):
    # Snakemake first: another run on the same files, one on other files and `dvc repro` all refuse.
    first = start([*SNAKEMAKE, PROSE_SPLIT])
    wait_for(lambda: (repo / "logs/curate_shard/prose-00000.log").exists() or first.poll() is not None,
             "the first run's first job")
    assert first.poll() is None, finish(first)[1]
    with paused(first):
        rivals = {"same files": start([*SNAKEMAKE, PROSE_SPLIT]), "other files": start([*SNAKEMAKE, CODE_SHARD]),
                  "dvc repro": start([*DVC, "repro", "curate_shard-prose-00000"])}
        results = {name: finish(proc) for name, proc in rivals.items()}
    busy = f"error: another snakemake run (pid {first.pid}) is running in this workspace"
    code, out = results["same files"]  # Snakemake's own lock, unless a run that ended (the next rival) removed it
    lock_race = ".snakemake/locks/" in out and "No such file or directory" in out  # Snakemake's lock dir, removed by a rival
    assert code != 0 and ("Directory cannot be locked" in out or busy in out or lock_race), out
    code, out = results["other files"]  # Snakemake allows it (no shared file): workflow/lock.py does not
    assert code == 1 and busy in out, out
    code, out = results["dvc repro"]
    assert code != 0 and "Unable to acquire lock" in out and "Running stage" not in out, out
    code, out = finish(first)
    assert code == 0 and "2 of 2 steps (100%) done" in out, out
    assert (repo / PROSE_SPLIT).is_dir() and not (repo / CODE_SHARD).exists() and not leftovers(repo)

    # DVC first: a run started while `dvc repro` runs a stage's command stops before its first job. While DVC
    # rewrites artifacts/params/ (its `resolve` stage), Snakemake's start leaves that directory alone.
    dvc = start([*DVC, "repro", "curate_shard-prose-00000"])
    rwlock = repo / ".dvc/tmp/rwlock"

    def dvc_writes(fragment: str) -> bool:
        try:
            return any(fragment in out for out in json.loads(rwlock.read_text()).get("write", {}))
        except (OSError, ValueError):
            return False

    wait_for(lambda: dvc_writes(paths.stage_params_dir()) or dvc.poll() is not None, "dvc repro's resolve stage", poll=0.01)
    assert dvc.poll() is None, finish(dvc)[1]
    def params_files() -> list[tuple[str, int]]:
        return sorted((f.name, f.stat().st_mtime_ns) for f in (repo / paths.stage_params_dir()).glob("*"))

    with paused(dvc):
        before = params_files()
        code, out = finish(start([*SNAKEMAKE, CODE_SHARD]))
        assert code == 1 and f"error: dvc repro (pid {dvc.pid}) is running in this workspace" in out, out
        assert "dvc.yaml and artifacts/params/ left as they are" in out, out
        assert params_files() == before
    wait_for(lambda: dvc_writes(paths.curate_shard_dir("prose", 0)) or dvc.poll() is not None, "dvc repro's curate stage")
    assert dvc.poll() is None, finish(dvc)[1]
    with paused(dvc):
        refused, dry = start([*SNAKEMAKE, CODE_SHARD]), start([*SNAKEMAKE, "-n", CODE_SHARD])
        (code, out), (dry_code, dry_out) = finish(refused), finish(dry)
    assert code == 1 and f"error: dvc repro (pid {dvc.pid}) is running in this workspace" in out, out
    assert dry_code == 0 and "curate_shard" in dry_out, dry_out  # a dry run neither waits nor refuses
    code, out = finish(dvc)
    assert code == 0 and "Updating lock file 'dvc.lock'" in out, out
    assert not (repo / CODE_SHARD).exists() and not leftovers(repo)
