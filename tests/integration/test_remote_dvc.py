"""A study whose data lives in S3 and whose DVC remote is S3 (dvc-s3), against moto's S3 server on 127.0.0.1.

The set-up a lab uses: the remote's URL committed in `.dvc/config`, credentials and endpoint in the
environment (AWS_*), never in the repository. `dvc push` -> fresh clone -> `dvc pull` -> `dvc repro`
runs nothing; DVC tracks the source object by its ETag, so re-uploading the same bytes changes nothing
and replacing them invalidates curation. The local-folder remote: tests/integration/test_dvc_repro.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.study import micro_params
from tests.conftest import ROOT, copy_repo, run
from tests.integration.test_dvc_repro import dvc, git, ran_stages
from workflow import paths

pytestmark = pytest.mark.slow

SOURCE_KEY = "prose/jargon_file.jsonl.zst"
REMOTE = "s3://arbor-dvc/study"


@pytest.fixture(scope="module")
def origin(s3, tmp_path_factory) -> tuple[Path, dict]:
    """The micro study (one trunk checkpoint) reading its source from s3://corpus, run by `dvc repro`,
    committed and pushed to the S3 remote; returns the repo and the timings."""
    client = s3.client()
    for bucket in ("corpus", "arbor-dvc"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=(ROOT / "data/sample" / SOURCE_KEY).read_bytes())
    params = micro_params()
    params["trunk"]["checkpoints"] = [4]
    params["sources"]["prose"]["paths"] = ["s3://corpus/prose/*.jsonl.zst"]
    repo = copy_repo(tmp_path_factory.mktemp("dvc-s3") / "origin", params)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], repo)
    dvc(repo, "remote", "modify", "storage", "url", REMOTE)  # committed: every clone pushes and pulls there
    times = {}
    start = time.perf_counter()
    dvc(repo, "repro")
    times["repro"] = time.perf_counter() - start
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run the study")
    start = time.perf_counter()
    assert "pushed" in dvc(repo, "push")
    times["push"] = time.perf_counter() - start
    return repo, times


def remote_objects(s3) -> list[dict]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket="arbor-dvc", Prefix="study/")
    return [o for page in pages for o in page.get("Contents", [])]


def test_fresh_clone_pulls_from_s3_and_reproduces_nothing(origin, s3, capsys):
    repo, times = origin
    objects = remote_objects(s3)
    assert objects, "dvc push wrote into the S3 bucket"
    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "artifacts").exists()
    start = time.perf_counter()
    dvc(clone, "pull")
    pull = time.perf_counter() - start
    assert json.loads(dvc(clone, "status", "--json") or "{}") == {}
    start = time.perf_counter()
    out = dvc(clone, "repro")
    noop = time.perf_counter() - start
    assert ran_stages(out) == set(), out
    assert (clone / paths.eval_file("main@4")).read_bytes() == (repo / paths.eval_file("main@4")).read_bytes()
    assert (clone / paths.report_file()).read_bytes() == (repo / paths.report_file()).read_bytes()
    lock = (clone / "dvc.lock").read_text()
    assert f"path: s3://corpus/{SOURCE_KEY}" in lock and "etag:" in lock, "DVC records the source object's ETag"
    with capsys.disabled():
        print(f"\n[dvc s3] {len(objects)} objects, {sum(o['Size'] for o in objects):,} B on the remote; "
              f"repro {times['repro']:.1f} s, push {times['push']:.1f} s, pull into a fresh clone {pull:.1f} s, "
              f"no-op repro {noop:.1f} s")


def test_source_object_reuploaded_or_replaced(origin, s3):
    """Same bytes uploaded again: nothing to do. Other bytes: curation of that object is stale."""
    repo, _ = origin
    client, body = s3.client(), (ROOT / "data/sample" / SOURCE_KEY).read_bytes()
    client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=body)
    assert json.loads(dvc(repo, "status", "--json") or "{}") == {}
    client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=body[: len(body) // 2])
    try:
        status = json.loads(dvc(repo, "status", "--json"))
        assert status == {"curate_shard-prose-00000": [{"changed deps": {f"s3://corpus/{SOURCE_KEY}": "modified"}}]}
    finally:
        client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=body)


def test_snakemake_follows_the_source_object(origin, s3, tmp_path):
    """Snakemake tracks a remote input through its stand-in (size and ETag, rewritten only when the object
    changed): the same bytes uploaded again plan nothing, other bytes plan that object's curation."""
    repo = shutil.copytree(origin[0], tmp_path / "smk", symlinks=True)
    client, body = s3.client(), (ROOT / "data/sample" / SOURCE_KEY).read_bytes()
    shard = paths.curate_shard_dir("prose", "00000")
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1", shard]
    env = {"SLURM_CONF": "/dev/null"}

    def planned() -> set[str]:
        out = run([*snakemake, "-n"], repo, env=env).stdout
        return {o for line in re.findall(r"^\s+output: (.+)$", out, flags=re.M) for o in line.split(", ")}

    run(snakemake, repo, env=env)  # Snakemake's own record of the shard
    assert planned() == set()
    client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=body)
    assert planned() == set()
    client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=body[: len(body) // 2])
    try:
        assert planned() == {shard}
        why = run([sys.executable, "-m", "workflow", "why", shard], repo, env=env).stdout
        assert re.search(r"curate_shard@prose-00000\s+inputs changed: artifacts/\.remote/\w+\.json", why), why
    finally:
        client.put_object(Bucket="corpus", Key=SOURCE_KEY, Body=body)
