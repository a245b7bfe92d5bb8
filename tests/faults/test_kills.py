"""Kill faults (issue 9): SIGKILL each stage kind (curate, tokenize, trunk, decay, merge, evaluate) at seeded
random moments, 20 kills in all, and resume with Snakemake and with `dvc repro`.

Checked: after every kill each output of the killed job is absent or the finished artifact, never a partial
one (temporaries `<out>.tmp-<pid>` / `.old-<pid>` may stay behind, except a trunk segment's or a decay's,
which its finished run removes); the next run of the engine runs the job again; at the end every artifact
equals the uninterrupted run's (the session's `tiny_study`) bit for bit.

Each engine works in its own copy of the finished tiny study, both at once. Per stage kind it picks one
job and makes it one to run (outputs deleted; for DVC also its dvc.lock record and the run cache, else DVC
checks the recorded outputs out of its cache), starts the engine on it and SIGKILLs the engine's whole
process group a random moment after the job's `python -m workflow` process appears, as often as the
schedule says, then lets the engine finish. Snakemake needs `--unlock` after each kill (its locks outlive
it). Jobs go downstream first (evaluate ... curate), so a rebuilt output is never newer than a later job's
outputs (Snakemake's mtime trigger) and each run rebuilds only its job: the cost is the killed attempts
plus six jobs per engine, not two whole studies.

Not compared: `lineage.revision.dvc` of eval JSONs (the dvc.lock record when the evaluation ran: the
reference was evaluated before `make study`'s `dvc commit` wrote dvc.lock). Everything else, training logs
and manifests included, must be byte-identical (throughput, a wall-clock figure, is never saved in a model dir).

`ARBOR_KILL_SEED=<n>` replays a schedule; the seed and each kill are printed (`pytest -s`) and named in failures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import clone_study
from workflow import paths, stages
from workflow.engines import dvc as dvc_engine
from workflow.engines import snakemake as engine
from workflow.params import Params, load_params

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KINDS = ("curate", "tokenize", "trunk", "decay", "merge", "evaluate")  # upstream first
KILLS = {"dvc": 10, "snakemake": 10}
LEFTOVER = re.compile(r"\.(tmp|old)-\d+$")  # what a killed `atomic_dir` / `atomic_file` may leave
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Job:
    kind: str
    argv: tuple[str, ...]  # `python -m workflow <argv>`: the Snakemake job
    outputs: tuple[str, ...]
    stage: str  # the DVC stage
    benchmark: str  # its Snakemake benchmark in the reference run (duration)
    dvc_argv: tuple[str, ...] | None = None  # when DVC runs another command (one `trunk` stage for every segment)
    scratch: str | None = None  # its resume saves (trunk, decay)

    @property
    def name(self) -> str:
        return " ".join(self.argv)


KIND_OF = {"curate_shard": "curate", "curate_split": "curate", "curate": "curate", "tokenizer": "tokenize",
           "tokenize": "tokenize", "trunk": "trunk", "decay": "decay", "merge": "merge", "evaluate": "evaluate"}


def study_jobs(params: Params) -> dict[str, list[Job]]:
    """Every job of the study by kind, from the stage table (cwd: the study, for the curate_shard globs)."""
    jobs: dict[str, list[Job]] = {kind: [] for kind in KINDS}
    for job in stages.jobs(params):
        kind = KIND_OF.get(job.stage.name)
        if kind is None:
            continue
        argv = tuple(job.command.split()[3:])  # after `python -m workflow`
        benchmark = engine.job_file(job.stage.name, "benchmarks", "").removeprefix("benchmarks/").format(**job.key)
        scratch = {"trunk": lambda k: paths.scratch_dir("trunk", f"step-{k['step']}"),
                   "decay": lambda k: paths.scratch_dir("decay", k["branch"])}.get(job.stage.name)
        jobs[kind].append(Job(kind, argv, tuple(job.outputs), dvc_engine.stage_name(job.stage, job.key), benchmark,
                              dvc_argv=(job.stage.name,) if job.stage.run_all else None,
                              scratch=scratch(job.key) if scratch else None))
    return jobs


def schedule(rng: random.Random, jobs: dict[str, list[Job]]) -> dict[str, list[tuple[Job, int]]]:
    """Per engine: one job of each kind (downstream first) and its number of kills, at least one each."""
    plan = {}
    for engine, total in KILLS.items():
        counts = dict.fromkeys(KINDS, 1)
        for kind in rng.choices(KINDS, k=total - len(KINDS)):
            counts[kind] += 1
        plan[engine] = [(rng.choice(jobs[kind]), counts[kind]) for kind in reversed(KINDS)]
    return plan


# --- comparing with the reference -------------------------------------------------------------

def canonical(path: Path) -> bytes:
    """A file's bytes, without the values that legitimately differ between two runs (see the module doc)."""
    name = path.name
    if path.parent.name == "eval" and name.endswith(".json"):
        result = json.loads(path.read_text())
        result["lineage"]["revision"].pop("dvc", None)
        return json.dumps(result, sort_keys=True).encode()
    return path.read_bytes()


def files(root: Path, rel: str) -> dict[str, Path]:
    """The files of output `rel` (a file or a directory) under `root`, without Snakemake's timestamps and
    the temporaries of killed writers."""
    top = root / rel
    found = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): p for p in found
            if p.name != ".snakemake_timestamp" and not any(LEFTOVER.search(part) for part in p.parts)}


def differences(repo: Path, reference: Path, rel: str) -> list[str]:
    got, want = files(repo, rel), files(reference, rel)
    out = [f"missing {f}" for f in sorted(want.keys() - got.keys())] + [f"extra {f}" for f in sorted(got.keys() - want.keys())]
    return out + [f"differs {f}" for f in sorted(got.keys() & want.keys()) if canonical(got[f]) != canonical(want[f])]


def leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in (repo / paths.ARTIFACTS).rglob("*") if LEFTOVER.search(p.name))


def remove(repo: Path, rel: str) -> None:
    path = repo / rel
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- engines and kills ------------------------------------------------------------------------

def engine_cmd(engine: str, job: Job) -> list[str]:
    return [*SNAKEMAKE, *job.outputs] if engine == "snakemake" else [sys.executable, "-m", "dvc", "repro", job.stage]


def stage_argv(engine: str, job: Job) -> tuple[str, ...]:
    return (job.dvc_argv or job.argv) if engine == "dvc" else job.argv


def is_stage(cmdline: list[str], argv: tuple[str, ...]) -> bool:
    """`cmdline` is `python [-u] -m workflow <argv>`."""
    return any(cmdline[i:i + 2] == ["-m", "workflow"] and tuple(cmdline[i + 2:]) == argv for i in range(len(cmdline)))


def find_stage(root: psutil.Process, argv: tuple[str, ...]) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        for proc in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if is_stage(proc.cmdline(), argv):
                    return proc
    return None


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def attempt(engine: str, job: Job, repo: Path, log: Path, kill_at: float = math.inf) -> float | None:
    """Start `engine` on `job`; SIGKILL its whole process group `kill_at` s after the job's process appears.
    None when killed; else the engine ran to its end and this is the job's duration (0: it did not run the job)."""
    argv = stage_argv(engine, job)
    with open(log, "w") as out:
        proc = subprocess.Popen(engine_cmd(engine, job), cwd=repo, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        root, stage, took = psutil.Process(proc.pid), None, 0.0
        while stage is None and proc.poll() is None:
            stage = find_stage(root, argv)
            time.sleep(0.01)
        if stage is not None:
            seen = time.monotonic()
            while running(stage):
                if time.monotonic() - seen >= kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return None
                time.sleep(0.005)
            took = time.monotonic() - seen
        assert proc.wait(timeout=600) == 0, f"{engine} on `{job.name}` failed:\n{log.read_text()[-4000:]}"
        return took
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def unlock(engine: str, repo: Path) -> None:
    """What the engine needs after a SIGKILL before it runs again: Snakemake's locks outlive its process
    (`LockException: ... It can be removed with the --unlock argument`); DVC's lock is an flock, gone with it."""
    if engine == "snakemake":
        proc = subprocess.run([*SNAKEMAKE, "--unlock"], cwd=repo, env=ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def reference_seconds(reference: Path, job: Job) -> float:
    """The job's wall time in the uninterrupted run (Snakemake's benchmark)."""
    lines = (reference / "benchmarks" / f"{job.benchmark}.tsv").read_text().splitlines()
    return float(lines[-1].split("\t")[0])


def prepare(engine: str, job: Job, repo: Path) -> None:
    """Make `job` one the engine has to run: its outputs deleted and, for DVC, its dvc.lock record and the run
    cache too (else `dvc repro` checks the recorded outputs out of its cache instead of running the job)."""
    for out in job.outputs:
        remove(repo, out)
    if engine == "dvc":
        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        lock["stages"].pop(job.stage)
        (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
        shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)


def kill_and_resume(engine: str, picks: list[tuple[Job, int]], reference: Path, repo: Path, rng: random.Random,
                    seed: int) -> list[tuple[str, float]]:
    """Run the schedule of one engine in `repo`; returns the kills done (job, seconds into it).

    Kill moments are uniform over the job's expected duration: its reference duration times the ratio of
    whole runs here to the reference so far (`timed`; machines and loads differ). A job that ends before its
    kill moment runs again with a new one, drawn within the duration just measured."""
    logs, kills, timed = repo.parent / "logs", [], [(1.0, 1.0)]  # (here, reference) seconds
    logs.mkdir()
    for job, n in picks:
        where = f"ARBOR_KILL_SEED={seed}, {engine}, `{job.name}`"
        prepare(engine, job, repo)
        moments, misses = [], 0
        expected = reference_seconds(reference, job) * sum(t for t, _ in timed) / sum(r for _, r in timed)
        while len(moments) < n:
            kill_at = rng.uniform(0, expected)
            took = attempt(engine, job, repo, logs / f"{job.stage}-{len(moments)}-{misses}.log", kill_at)
            if took is not None:
                assert took > 0, f"{where}: {engine} did not run the job"
                misses += 1
                assert misses <= 5, f"{where}: the job kept ending before its kill moment"
                assert not [d for out in job.outputs for d in differences(repo, reference, out)], f"{where}: a rerun differs"
                print(f"  {engine} {job.name}: ended after {took:.1f}s, before the kill at {kill_at:.1f}s: again")
                timed.append((took, reference_seconds(reference, job)))
                expected = took
                prepare(engine, job, repo)
                continue
            moments.append(kill_at)
            print(f"  {engine} kill {len(kills) + len(moments)}: {job.name} at {kill_at:.2f}s")
            for out in job.outputs:  # a killed job's output is absent or whole, never partial
                if (repo / out).exists():
                    assert not differences(repo, reference, out), \
                        f"{where}, killed at {kill_at:.2f}s: partial {out} ({differences(repo, reference, out)})"
            unlock(engine, repo)
        whole = all((repo / out).exists() for out in job.outputs)
        took = attempt(engine, job, repo, logs / f"{job.stage}-resume.log")
        assert took or whole, f"{where}: resuming did not run the killed job"
        if took and job.kind not in ("trunk", "decay"):  # those continue from their last scratch save
            timed.append((took, reference_seconds(reference, job)))
        print(f"  {engine} {job.name}: resumed, ran {took:.1f}s")
        diffs = [d for out in job.outputs for d in differences(repo, reference, out)]
        if job.scratch:  # checkpoint-sized: a finished trunk segment or decay removes what killed attempts left
            diffs += [f"left {p}" for p in leftovers(repo) if LEFTOVER.sub("", p) in (*job.outputs, job.scratch)]
        assert not diffs, f"{where}, killed at {[round(m, 2) for m in moments]} s: {diffs}"
        kills += [(job.name, m) for m in moments]
    diffs = differences(repo, reference, paths.ARTIFACTS)
    assert not diffs, f"ARBOR_KILL_SEED={seed}, {engine}: {diffs}"
    print(f"  {engine}: every artifact identical to the uninterrupted run's; temporaries left: {leftovers(repo) or 'none'}")
    return kills


def test_sigkill_every_stage_kind_then_resume_is_bit_identical(tiny_study, tmp_path):
    seed = int(os.environ.get("ARBOR_KILL_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    with contextlib.chdir(tiny_study):
        plan = schedule(rng, study_jobs(load_params("params.yaml")))
    print(f"\nkill schedule (ARBOR_KILL_SEED={seed}): " + "; ".join(
        f"{engine}: " + ", ".join(f"{job.name} x{n}" for job, n in picks) for engine, picks in plan.items()))
    # the engines work side by side, each in its own copy (most of a job is single-threaded start-up)
    with ThreadPoolExecutor(len(plan)) as pool:
        runs = {engine: pool.submit(kill_and_resume, engine, picks, tiny_study, clone_study(tiny_study, tmp_path / engine / "repo"),
                                    random.Random(f"{seed}/{engine}"), seed) for engine, picks in plan.items()}
        kills = {engine: run.result() for engine, run in runs.items()}
    print("kills done: " + "; ".join(f"{e}: " + ", ".join(f"{j} at {m:.2f}s" for j, m in k) for e, k in kills.items()))
    assert {e: len(k) for e, k in kills.items()} == KILLS
