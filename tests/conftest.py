"""Shared fixtures: the repo root, the default params, and a copy of the repository to run studies in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import workflow  # noqa: F401  (first: it sets MKL_CBWR before any test module loads torch)

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS = ROOT / "tests" / "configs" / "tiny" / "params.yaml"


def pytest_configure(config) -> None:
    """pytest-xdist's workers share the cores: each worker, and every job it starts, gets its share of threads
    (before any test module loads torch). OpenMP threads that outnumber the free cores spin at every barrier:
    beside one busy core, a trunk job at two threads burns 1.9x the CPU of one thread (bench/threads.py).
    Snakemake sets OMP_NUM_THREADS per job from the rule's threads; ARBOR_THREADS caps it in the job."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        share = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))
        os.environ.setdefault("ARBOR_THREADS", share)
        os.environ.setdefault("OMP_NUM_THREADS", share)


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's venv first on PATH (plus `env`); on failure show its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def copy_repo(dest: Path, params: dict | Path | None = None) -> Path:
    """Copy the working tree (tracked + untracked, not ignored) into `dest` as a fresh git + DVC repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_symlink():  # e.g. `cluster` -> profiles/cluster
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / rel)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if params is not None:
        text = params.read_text() if isinstance(params, Path) else yaml.safe_dump(params, sort_keys=False)
        (dest / "params.yaml").write_text(text)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "study"], dest)
    return dest


def clone_study(src: Path, dest: Path) -> Path:
    """Copy a study that has run (git, DVC cache and lock, Snakemake metadata, mtimes): both engines find it up to date."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def recorded_reads(study: Path) -> Path:
    """Where the jobs of the session's tiny study recorded the params they read (workflow/reads.py), beside it."""
    return study.parent / f"{study.name}-reads"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """`make study` (what `make run` runs after installing) on the tiny study, once per session: Snakemake runs it,
    DVC records it, every job records the params it read (`recorded_reads`). The uninterrupted reference: tests
    that edit or rerun a study work on a `clone_study` copy."""
    repo = copy_repo(tmp_path_factory.mktemp("tiny-study"), TINY_PARAMS)
    out = run(["make", "study", f"VENV={Path(sys.executable).parent.parent}", "CORES=2"], repo,
              env={"ARBOR_RECORD_READS": str(recorded_reads(repo)), "SLURM_CONF": "/dev/null"}).stdout
    assert f"report: {repo}/reports/summary.md" in out
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repository with the tiny study as params.yaml (dvc.yaml regenerated)."""
    dest = copy_repo(tmp_path / "repo", TINY_PARAMS)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], dest)
    return dest


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# Modules that share the session's `tiny_study` (one `make study`): pytest-xdist must run them on one worker.
TINY_STUDY_MODULES = ("tests/e2e/test_study.py", "tests/faults/test_kills.py", "tests/integration/test_invalidation.py")
# The scopes (modules; the tiny study's users are one) that start first, in this order; the rest follow in
# collection order. Each worker holds two scopes at a time, in turn: the SLURM module (about 5.5 min, half of it
# waiting for SLURM) and the tiny study's users (about 9 min, often two jobs at once) start together, so SLURM's
# waits leave a core to the tiny study's jobs; the science check's default study (about 5.5 min) follows the SLURM
# module; short modules fill both workers at the end.
FIRST_SCOPES = ("tests/cluster/test_slurm.py", TINY_STUDY_MODULES[0], "tests/e2e/test_science.py",
                "tests/unit/test_params.py")


def scope(nodeid: str) -> str:
    """The unit pytest-xdist gives one worker: a test module, or the users of the session's tiny study."""
    module = nodeid.split("::", 1)[0]
    return TINY_STUDY_MODULES[0] if module in TINY_STUDY_MODULES else module


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: fine without xdist installed
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs pytest-xdist with `--dist loadfile` (each module on one worker, so a module-scoped study
    runs once); this scheduler also keeps the users of the session's tiny study together."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class StudyScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope(nodeid)

    config.option.loadscopereorder = False  # scopes start in collection order (FIRST_SCOPES first), not by test count
    return StudyScheduling(config, log)


def pytest_collection_modifyitems(config, items) -> None:
    """FIRST_SCOPES first (a stable sort: every module keeps its order). Refuse a module that uses `tiny_study`
    without being in TINY_STUDY_MODULES (it would rebuild it under xdist)."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if "tiny_study" in item.fixturenames and module not in TINY_STUDY_MODULES:
            raise pytest.UsageError(f"{module} uses the tiny_study fixture: add it to TINY_STUDY_MODULES in tests/conftest.py")
    rank = {s: i for i, s in enumerate(FIRST_SCOPES)}
    items.sort(key=lambda item: rank.get(scope(item.nodeid), len(FIRST_SCOPES)))


@pytest.hookimpl(wrapper=True, tryfirst=True)  # the outermost wrapper: after pytest's short test summary
def pytest_terminal_summary(terminalreporter):
    """Skipped SLURM cluster tests are said again in the last lines of the run (`make test`), with what they leave untested."""
    from tests.cluster.conftest import SKIP_PREFIX

    result = yield

    reasons = set()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if SKIP_PREFIX in reason:
            reasons.add(reason[reason.index(SKIP_PREFIX):])
    for reason in sorted(reasons):
        terminalreporter.write_sep("!", "SLURM cluster tests skipped", red=True)
        terminalreporter.write_line(reason)
    return result
