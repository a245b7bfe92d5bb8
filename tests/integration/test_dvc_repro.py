"""Reproduction through DVC: a full run is pushed to the study's remote, a fresh clone pulls it and finds
nothing to run, a param edit (`dvc exp run -S`) re-runs only the stages that read it, and the cache
stores identical checkpoint files once.

The study is the tiny one cut to one source, one trunk checkpoint and two identical decay branches.
The remote is the default of `.dvc/config`: `arbor-dvc-remote/` next to the checkout.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.cluster.study import micro_params
from tests.conftest import copy_repo, run
from workflow import paths

pytestmark = pytest.mark.slow

DECAY = {"from": f"main@{4}", "steps": 2, "shape": "linear", "final_lr": 0.0}


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo).stdout


def git(repo: Path, *args: str) -> str:
    return run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], repo).stdout


def ran_stages(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def disk_bytes(*roots: Path) -> int:
    """Bytes on disk under `roots`, each inode counted once (what `du` reports for hardlinked files)."""
    seen, total = set(), 0
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """The study run in full by `dvc repro`, committed (dvc.lock included) and pushed to its default remote."""
    params = micro_params()
    params["trunk"]["checkpoints"] = [4]
    params["decays"] = {"a": dict(DECAY), "b": dict(DECAY)}  # identical branches: identical checkpoints (no YAML alias)
    repo = copy_repo(tmp_path_factory.mktemp("dvc") / "origin", params)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run the study")
    assert "pushed" in dvc(repo, "push")
    assert any((repo.parent / "arbor-dvc-remote").rglob("*")), "the default remote is next to the checkout"
    return repo


@pytest.fixture(scope="module")
def clone(origin) -> Path:
    """A fresh git clone of the study with its artifacts pulled from the remote (its own, empty cache)."""
    dest = origin.parent / "clone"
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    dvc(dest, "pull")
    return dest


def test_fresh_clone_pulls_everything_and_reproduces_nothing(origin, clone):
    assert json.loads(dvc(clone, "status", "--json") or "{}") == {}
    out = dvc(clone, "repro")
    assert ran_stages(out) == set(), out
    for model in ("main@4", "decay-a", "decay-b"):
        assert filecmp.cmp(origin / paths.eval_file(model), clone / paths.eval_file(model), shallow=False)
    assert (clone / paths.report_file()).read_bytes() == (origin / paths.report_file()).read_bytes()


def test_exp_run_reruns_only_the_edited_branch(clone):
    out = dvc(clone, "exp", "run", "-S", "decays.a.steps=3")
    assert ran_stages(out) == {"resolve", "decay-a", "evaluate-decay@a", "report"}, out
    assert json.loads(dvc(clone, "status", "--json") or "{}") == {}
    rows = json.loads(dvc(clone, "exp", "show", "--json"))
    exps = [e for row in rows for e in [row, *(x["revs"][0] for x in row.get("experiments") or [])]]
    data = [e["data"] for e in exps if e.get("data")]
    steps = {d["params"][paths.stage_params("decay-a")]["data"]["decays.a"]["steps"] for d in data}
    assert steps == {2, 3}
    metrics = [d["metrics"] for d in data]
    assert all(any(f.startswith("artifacts/eval/") for f in m) for m in metrics), metrics
    evals = {f: m[f]["data"] for m in metrics for f in m}
    assert "heldout" in evals["artifacts/eval/decay-a.json"]


def test_cache_stores_identical_checkpoints_once(origin, capsys):
    a, b = origin / paths.decay_dir("a"), origin / paths.decay_dir("b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    same = [f for f in files if (b / f).is_file() and filecmp.cmp(a / f, b / f, shallow=False)]
    assert sum((a / f).stat().st_size for f in same) > 0.9 * sum((a / f).stat().st_size for f in files), \
        "identical branches, identical weights"
    duplicate = sum((b / f).stat().st_blocks * 512 for f in same)
    artifacts, cache = origin / "artifacts", origin / ".dvc" / "cache"
    copied = disk_bytes(artifacts, cache)  # the default cache.type (reflink, else copy): workspace + cache
    assert disk_bytes(cache) < disk_bytes(artifacts) - duplicate / 2, "the cache holds the identical files once"
    dvc(origin, "config", "--local", "cache.type", "hardlink")
    dvc(origin, "checkout", "--relink")
    linked = disk_bytes(artifacts, cache)
    assert json.loads(dvc(origin, "status", "--json") or "{}") == {}
    assert linked - disk_bytes(cache) < 0.05 * linked, "with hardlinks the workspace adds (almost) nothing to the cache"
    with capsys.disabled():
        print(f"\n[dvc cache] decay checkpoint: {disk_bytes(a)} B, {duplicate} B of it identical in the other branch; "
              f"artifacts + cache on disk: {copied} B with cache.type copy, {linked} B with hardlink")
