"""Kill faults at the worst moments (issues 9, 17): each stage kind (curate, tokenize, eval_tasks, trunk, decay,
merge, evaluate, report) is SIGKILLed 3 times under each engine at chosen events, not clock times, and resumed
with Snakemake and with `dvc repro`; and lost or truncated outputs are rebuilt.

Where the kills land (`workflow/faults.py`: `ARBOR_FAULT=<event>[:<n>]` makes the job SIGKILL its process group,
the engine with it, at the n-th occurrence of the event): a checkpoint write between its tensor shards and its
meta.json, just after a segment's first intermediate save, inside tokenize's publish, between the inputs of a
merge's streaming average, between the files of eval_tasks' and report's outputs, just before an output
replaces its old version. `dvc.commit` is done here, not by the job: the job's command has exited and `dvc repro`
is hashing and caching its outputs (a trunk checkpoint dir), before dvc.lock records them.

Checked: after every kill each output of the killed job is absent or the finished artifact, never a partial
one (temporaries `<out>.tmp-<pid>` / `.old-<pid>` may stay behind, except a trunk segment's or a decay's,
which its finished run removes); the next run of the engine runs the job again; at the end every artifact
equals the uninterrupted run's (the session's `tiny_study`) bit for bit.

Each engine works in its own copy of the finished tiny study, both at once. Per stage kind it takes one job and
makes it one to run (outputs deleted; for DVC also its dvc.lock record and the run cache, else DVC checks the
recorded outputs out of its cache), runs the engine on it once per kill, then once more to finish. Snakemake
needs `--unlock` after each kill (its locks outlive it; the suite removes them as `--unlock` does, without a
start). Jobs go downstream first (report ... curate), so a rebuilt output is never newer than a later job's
outputs (Snakemake's mtime trigger) and each run rebuilds only its job: the cost is the killed attempts plus
eight jobs per engine, not two whole studies.

Not compared: `lineage.revision.dvc` of eval JSONs (the dvc.lock record when the evaluation ran: the
reference was evaluated before `make study`'s `dvc commit` wrote dvc.lock). Everything else, training logs
and manifests included, must be byte-identical (throughput, a wall-clock figure, is never saved in a model dir).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
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
from workflow import lock, paths, stages
from workflow.engines import dvc as dvc_engine
from workflow.params import load_params

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KIND_OF = {"curate_shard": "curate", "curate_split": "curate", "curate": "curate", "tokenizer": "tokenize",
           "tokenize": "tokenize", "eval_tasks": "eval_tasks", "trunk": "trunk", "decay": "decay", "merge": "merge",
           "evaluate": "evaluate", "report": "report", "tokenize_selected": "tokenize",
           "classifier": "quality", "score": "quality", "select": "quality"}
# Per engine, downstream first: (kind, the job's `python -m workflow` arguments, its three kills)
PLAN = {
    "snakemake": [
        ("report", "report", ("report.plot:1", "report.plot:3", "io.replace:1")),
        ("evaluate", "evaluate --model merge-lw", ("evaluate.model:1", "evaluate.heldout:1", "io.replace:1")),
        ("merge", "merge --name lw", ("merge.input:1", "merge.input:2", "checkpoint.shard:1")),
        # the third kill hits the final save: the second attempt resumed after the intermediate one
        ("decay", "decay --branch short", ("checkpoint.shard:1", "train.saved:1", "checkpoint.shard:1")),
        ("trunk", "trunk --trunk main --step 24", ("checkpoint.shard:1", "train.saved:1", "checkpoint.shard:1")),
        ("eval_tasks", "eval_tasks", ("eval_tasks.write:1", "io.replace:1", "io.replace:2")),
        ("quality", "classifier --scorer prose_like", ("io.replace:1", "io.replaced:1", "io.replace:1")),
        ("tokenize", "tokenize --domain code", ("io.replace:1", "tokenize.publish:1", "tokenize.publish:2")),
        ("curate", "curate --source prose", ("curate.shard:1", "curate.shard:2", "io.replace:2")),
    ],
    "dvc": [
        ("report", "report", ("report.plot:2", "io.replace:1", "report.plot:1")),
        ("evaluate", "evaluate --model main@12", ("evaluate.heldout:1", "io.replace:1", "evaluate.model:1")),
        ("merge", "merge --name both", ("merge.input:2", "checkpoint.shard:1", "io.replace:2")),
        ("decay", "decay --branch rewarm", ("checkpoint.shard:1", "train.saved:1", "checkpoint.shard:1")),
        ("trunk", "trunk --trunk main --step 24", ("checkpoint.shard:1", "train.saved:1", "dvc.commit")),  # DVC: `trunk` runs the chain
        ("eval_tasks", "eval_tasks", ("io.replace:2", "eval_tasks.write:1", "io.replace:1")),
        ("quality", "score --scorer prose_like --source prose", ("io.replaced:1", "io.replace:1", "io.replace:1")),
        ("tokenize", "tokenize --domain prose", ("tokenize.publish:2", "io.replace:1", "tokenize.publish:1")),
        ("curate", "curate --source code", ("curate.shard:1", "io.replace:1", "io.replace:2")),
    ],
}
LEFTOVER = re.compile(r"\.(tmp|old)-\d+$")  # what a killed `atomic_dir` / `atomic_file` may leave
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--cores", "2"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Job:
    kind: str
    argv: tuple[str, ...]  # `python -m workflow <argv>`: the Snakemake job
    outputs: tuple[str, ...]
    stage: str  # the DVC stage
    dvc_argv: tuple[str, ...] | None = None  # when DVC runs another command (one `trunk` stage for every segment)
    scratch: str | None = None  # its resume saves (trunk, decay)

    @property
    def name(self) -> str:
        return " ".join(self.argv)


def study_jobs() -> dict[str, Job]:
    """Every job of the study by its arguments, from the stage table (cwd: the study, for the curate_shard globs)."""
    jobs, params = {}, load_params("params.yaml")
    for job in stages.jobs(params):
        argv = tuple(job.command.split()[3:])  # after `python -m workflow`
        scratch = {"trunk": lambda k: paths.scratch_dir("trunk", f"{k['trunk']}/step-{k['step']}"),
                   "decay": lambda k: paths.scratch_dir("decay", k["branch"])}.get(job.stage.name)
        jobs[" ".join(argv)] = Job(KIND_OF[job.stage.name], argv, tuple(job.outputs),
                                   dvc_engine.stage_name(job.stage, job.key, params),
                                   dvc_argv=(job.stage.name, "--trunk", job.key["trunk"]) if job.stage.run_all else None,
                                   scratch=scratch(job.key) if scratch else None)
    return jobs


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


def attempt(engine: str, job: Job, repo: Path, log: Path, fault: str | None = None) -> bool:
    """Run `engine` on `job` with `fault`; True when it was killed there, False when the engine ran to its end.
    A job fault is the job's own (`ARBOR_FAULT`, its process group: the engine too); `dvc.commit` SIGKILLs the
    engine's group the moment the job's process has ended, while DVC records its outputs."""
    env = dict(ENV)
    if fault and fault != "dvc.commit":
        env |= {"ARBOR_FAULT": fault, "ARBOR_FAULT_SCOPE": "group"}
    with open(log, "w") as out:
        proc = subprocess.Popen(engine_cmd(engine, job), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        if fault == "dvc.commit":
            root, stage = psutil.Process(proc.pid), None
            while stage is None and proc.poll() is None:
                stage = find_stage(root, stage_argv(engine, job))
                time.sleep(0.01)
            while stage is not None and running(stage):
                time.sleep(0.002)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=600)
        if rc == -signal.SIGKILL:
            return True
        assert rc == 0, f"{engine} on `{job.name}` ({fault or 'no fault'}) exited {rc}:\n{log.read_text()[-4000:]}"
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def unlock(engine: str, repo: Path, start: bool = True) -> None:
    """What the engine needs after a SIGKILL before it runs again: Snakemake's locks outlive its process
    (`LockException: ... It can be removed with the --unlock argument`); DVC's lock is an flock, gone with it,
    but DVC rewrites `.dvc/tmp/rwlock` in place: a kill in that instant leaves it empty, and DVC refuses to start
    ("Unable to read RWLock-file ... JSON structure is corrupted") until it is deleted (README, crashes).
    `start=False`: remove `.snakemake/locks` as `snakemake --unlock` does (snakemake/persistence/file.py), without
    its start-up (1.7 CPU-s; the kill suite unlocks 27 times)."""
    if engine == "dvc":
        rwlock = repo / lock.DVC_TMP / "rwlock"
        try:
            json.loads(rwlock.read_text())
        except FileNotFoundError:
            pass
        except json.JSONDecodeError:
            rwlock.unlink()
            print(f"  dvc: the kill left {rwlock.relative_to(repo)} unreadable; deleted")
        return
    if not start:
        shutil.rmtree(repo / ".snakemake" / "locks", ignore_errors=True)  # else the next run stops with LockException
        return
    proc = subprocess.run([*SNAKEMAKE, "--unlock"], cwd=repo, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def lock_record(repo: Path, stage: str) -> dict | None:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"].get(stage)


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


def kill_and_resume(engine: str, plan: list, reference: Path, repo: Path) -> dict[str, list[str]]:
    """Run one engine's plan in `repo`; returns the kills done per stage kind."""
    logs, kills = repo.parent / "logs", {}
    logs.mkdir()
    with contextlib.chdir(repo):
        jobs = study_jobs()
    for kind, name, faults in plan:
        job = jobs[name]
        assert job.kind == kind
        prepare(engine, job, repo)
        for i, fault in enumerate(faults):
            where = f"{engine}, `{job.name}`, kill {i + 1} at {fault}"
            assert attempt(engine, job, repo, logs / f"{job.stage}-{i}.log", fault), f"{where}: the job ended before it"
            for out in job.outputs:  # a killed job's output is absent or whole, never partial
                if (repo / out).exists():
                    assert not differences(repo, reference, out), f"{where}: partial {out} ({differences(repo, reference, out)})"
            if fault == "dvc.commit":
                assert lock_record(repo, job.stage) is None, f"{where}: DVC had already recorded the outputs"
            unlock(engine, repo, start=False)
            kills.setdefault(kind, []).append(fault)
            print(f"  {engine} kill {sum(map(len, kills.values()))}: {job.name} at {fault}")
        took, log = time.monotonic(), logs / f"{job.stage}-resume.log"
        attempt(engine, job, repo, log)
        assert "-m workflow " + " ".join(stage_argv(engine, job)) in log.read_text(), f"{engine}: did not rerun `{job.name}`"
        print(f"  {engine} {job.name}: resumed in {time.monotonic() - took:.1f}s")
        diffs = [d for out in job.outputs for d in differences(repo, reference, out)]
        if job.scratch:  # checkpoint-sized: a finished trunk segment or decay removes what killed attempts left
            diffs += [f"left {p}" for p in leftovers(repo) if LEFTOVER.sub("", p) in (*job.outputs, job.scratch)]
        if engine == "dvc":
            assert lock_record(repo, job.stage) is not None, f"{engine}, `{job.name}`: not recorded in dvc.lock"
        assert not diffs, f"{engine}, `{job.name}`, killed at {faults}: {diffs}"
    diffs = differences(repo, reference, paths.ARTIFACTS)
    assert not diffs, f"{engine}: {diffs}"
    print(f"  {engine}: every artifact identical to the uninterrupted run's; temporaries left: {leftovers(repo) or 'none'}")
    return kills


@pytest.mark.timeout(2400)  # 54 kills and their resumes: about 10 minutes on 2 cores beside the rest of the suite
def test_kill_every_stage_kind_at_chosen_events_then_resume_is_bit_identical(tiny_study, tmp_path):
    # the engines work side by side, each in its own copy (most of a job is single-threaded start-up)
    with ThreadPoolExecutor(len(PLAN)) as pool:
        runs = {engine: pool.submit(kill_and_resume, engine, plan, tiny_study,
                                    clone_study(tiny_study, tmp_path / engine / "repo")) for engine, plan in PLAN.items()}
        kills = {engine: run.result() for engine, run in runs.items()}
    print("kills done: " + "; ".join(f"{e}: " + ", ".join(f"{k} {v}" for k, v in per.items()) for e, per in kills.items()))
    for engine, per_kind in kills.items():
        assert set(per_kind) == set(KIND_OF.values()) and all(len(v) >= 3 for v in per_kind.values()), (engine, per_kind)


def test_lost_and_truncated_checkpoints_are_rebuilt(tiny_study, tmp_path):
    """A checkpoint dir deleted between two jobs is rebuilt by the next `snakemake` run; one that a lost job left
    in place but truncated (on a shared filesystem its bytes can arrive late) is refused by its reader, and the
    next run rebuilds it: Snakemake had marked it incomplete (the job never reported its end)."""
    repo, rel = clone_study(tiny_study, tmp_path / "repo"), paths.merge_dir("both")
    remove(repo, rel)
    done = subprocess.run([*SNAKEMAKE, rel], cwd=repo, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and "rule merge:" in done.stdout + done.stderr, done.stderr[-3000:]
    assert not differences(repo, tiny_study, rel)

    remove(repo, rel)  # the job ends its output, then its node is lost before it exits
    lost = subprocess.run([*SNAKEMAKE, rel], cwd=repo, env=ENV | {"ARBOR_FAULT": "io.replaced:1", "ARBOR_FAULT_SCOPE": "group"},
                          capture_output=True, text=True, start_new_session=True)
    assert lost.returncode == -signal.SIGKILL and not differences(repo, tiny_study, rel), lost.stderr[-3000:]
    unlock("snakemake", repo)
    shard = next((repo / rel / "checkpoint").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    reader = subprocess.run([sys.executable, "-m", "workflow", "evaluate", "--model", "merge-both"], cwd=repo, env=ENV,
                            capture_output=True, text=True)
    assert reader.returncode != 0 and f"{shard.relative_to(repo)}" in reader.stderr, reader.stderr[-3000:]
    assert "rerun `python -m workflow merge --name both`" in reader.stderr
    marker = repo / ".snakemake" / "incomplete" / base64.b64encode(rel.encode()).decode()
    dry = subprocess.run([*SNAKEMAKE, "--dry-run", rel], cwd=repo, env=ENV, capture_output=True, text=True).stdout
    assert marker.exists() and "rule merge:" in dry, dry[-3000:]  # Snakemake's reason for an incomplete output:
    assert "reason: Forced execution" in dry  # `rerun-incomplete` (profiles/default) forces it
    done = subprocess.run([*SNAKEMAKE, rel], cwd=repo, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not differences(repo, tiny_study, rel)
