"""Sources in object storage and on the web, read from real servers on 127.0.0.1: moto's S3 server (IAM
checks on) and aiohttp's static file server, a TCP proxy between that drops connections mid-object.

Every remote read is checked against the curation of the same files read locally.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from tests.conftest import ROOT, copy_repo, run
from tests.servers import FlakyProxy
from workflow import stages
from workflow import paths
from workflow.curate import remote
from workflow.curate.readers import InvalidLog, Reader, input_entry, remote_manifest, write_manifest
from workflow.io import read_json, read_jsonl
from workflow.params import parse_params

BUCKET = "corpus"
N_OBJECTS, PER_OBJECT = 24, 10
STEPS_OFF = {"ftfy": False, "language": None, "gopher_repetition": None, "gopher_quality": None, "c4": None,
             "fineweb": None, "pii": None}
BIG = "big/jargon_file.jsonl.zst"  # the embedded sample file, 525 kB: many ranged reads, room to cut mid-object


def make_params(*patterns: str):
    return parse_params({
        "sources": {"web": {"paths": list(patterns), "domain": "web"}},
        "curation": {"min_chars": 10, "heldout_fraction": 0.2, "shard_docs": 50, "steps": STEPS_OFF,
                     "near_dedup": None, "decontamination": None},
        "trunk": {"checkpoints": [10]},
    })


def zst_lines(records: list[dict]) -> bytes:
    return zstandard.ZstdCompressor().compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3, web_root) -> Path:
    """The same files on local disk, in bucket `corpus` and under the web root: N_OBJECTS jsonl.zst objects
    (every 7th document without an id), a parquet file, the big sample file; a forbidden file on the web."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    local = tmp_path_factory.mktemp("local")
    docs = list(read_jsonl(ROOT / "data/sample/prose/jargon_file.jsonl.zst"))
    records = [{"text": d["text"]} if i % 7 == 3 else {"id": d["id"], "text": d["text"]} for i, d in enumerate(docs)]
    for k in range(N_OBJECTS):
        (local / "web").mkdir(exist_ok=True)
        (local / f"web/part-{k:03d}.jsonl.zst").write_bytes(zst_lines(records[k * PER_OBJECT:(k + 1) * PER_OBJECT]))
    (local / "pq").mkdir()
    rows = docs[300:360]
    pq.write_table(pa.table({"id": [d["id"] if i % 5 else None for i, d in enumerate(rows)],
                             "text": [d["text"] for d in rows]}), local / "pq/docs.parquet", row_group_size=16)
    (local / "big").mkdir()
    shutil.copy(ROOT / "data/sample/prose/jargon_file.jsonl.zst", local / BIG)
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(Bucket=BUCKET, Key=f.relative_to(local).as_posix(), Body=f.read_bytes())
    shutil.copytree(local, web_root, dirs_exist_ok=True)
    (web_root / "private").mkdir()
    (web_root / "private/secret.jsonl").write_text(json.dumps({"text": "not for you"}) + "\n")
    return local


def run_curate(where: Path, *patterns: str) -> dict:
    """Curate source `web` from `patterns` in directory `where`; its stats, and its documents as {text: id}."""
    where.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(where)
    try:
        stages.build(make_params(*patterns), "curate", source="web")
        root = Path(paths.curated_dir("web"))
        docs = {r["text"]: r["id"] for p in sorted(root.rglob("part-*.jsonl.zst")) for r in read_jsonl(p)}
        return {"stats": read_json(root / "stats.json"), "docs": docs}
    finally:
        os.chdir(cwd)


def same_documents(remote_run: dict, local_run: dict) -> None:
    """Same texts; an original id is kept as is, a missing one is a stable hash (of the path, so it differs)."""
    assert remote_run["docs"].keys() == local_run["docs"].keys()
    for text, doc_id in local_run["docs"].items():
        if len(doc_id) == 20 and all(c in "0123456789abcdef" for c in doc_id):  # a hash id
            assert len(remote_run["docs"][text]) == 20
        else:
            assert remote_run["docs"][text] == doc_id


def test_s3_glob_over_many_objects_reads_what_local_reads(corpus, s3, tmp_path):
    got = run_curate(tmp_path / "remote", f"s3://{BUCKET}/web/*.jsonl.zst")
    want = run_curate(tmp_path / "local", str(corpus / "web/*.jsonl.zst"))
    same_documents(got, want)
    assert got["stats"]["docs_in"] == want["stats"]["docs_in"] == N_OBJECTS * PER_OBJECT
    heads = [s3.client().head_object(Bucket=BUCKET, Key=f"web/part-{k:03d}.jsonl.zst") for k in range(N_OBJECTS)]
    assert got["stats"]["inputs"] == [{"url": f"s3://{BUCKET}/web/part-{k:03d}.jsonl.zst", "size": h["ContentLength"],
                                       "etag": h["ETag"]} for k, h in enumerate(heads)]
    shard_stats = read_json(tmp_path / "remote" / paths.curate_shard_dir("web", 3) / "stats.json")
    assert shard_stats["inputs"] == [got["stats"]["inputs"][3]]
    assert want["stats"]["inputs"][0]["url"].endswith("web/part-000.jsonl.zst") and "xxh3" in want["stats"]["inputs"][0]


@pytest.mark.parametrize("server", ["s3", "http"])
def test_parquet(corpus, web, server, tmp_path):
    url = f"s3://{BUCKET}/pq/*.parquet" if server == "s3" else f"{web.url}/pq/docs.parquet"
    got = run_curate(tmp_path / "remote", url)
    want = run_curate(tmp_path / "local", str(corpus / "pq/docs.parquet"))
    same_documents(got, want)
    assert len(got["docs"]) > 40


def test_http_reads_in_bounded_ranges(corpus, web, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "CHUNK", 64 << 10)
    got = run_curate(tmp_path / "remote", f"{web.url}/{BIG}")
    same_documents(got, run_curate(tmp_path / "local", str(corpus / BIG)))
    size = (corpus / BIG).stat().st_size
    spans = [tuple(map(int, rng.removeprefix("bytes=").split("-"))) for method, path, rng in web.requests()
             if method == "GET" and path == f"/{BIG}"]
    assert all(end - start + 1 <= 64 << 10 for start, end in spans), spans  # never the whole object at once
    assert sorted(spans)[0][0] == 0 and max(end for _, end in spans) == size - 1 and len(spans) >= size // (64 << 10)


def test_unchanged_objects_are_not_read_again_a_replaced_one_is(corpus, web, web_root, tmp_path):
    """Under Snakemake (the stand-ins of remote inputs: one HEAD each): a second run reads no object's body and
    re-runs nothing; a replaced object re-curates its own part alone."""
    pattern = f"{web.url}/web/*.jsonl.zst"
    repo = copy_repo(tmp_path / "repo", make_params(pattern).model_dump(mode="json"))
    target = paths.curated_dir("web")
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1", target]
    env = {"SLURM_CONF": "/dev/null"}

    def body_reads(since: int) -> set[str]:
        return {r[1] for r in web.requests()[since:] if r[0] == "GET" and r[1].startswith("/web/part-")}

    run(snakemake, repo, env=env)
    first = read_json(repo / target / "stats.json")
    shard_stats = sorted(repo.glob("artifacts/.curate/web/shard-*/stats.json"))
    mtimes = [p.stat().st_mtime_ns for p in shard_stats]
    seen = len(web.requests())
    second = run(snakemake, repo, env=env)
    assert "Nothing to be done" in second.stdout + second.stderr
    assert body_reads(seen) == set()  # HEADs only
    assert [p.stat().st_mtime_ns for p in shard_stats] == mtimes

    replaced = web_root / "web/part-005.jsonl.zst"
    old = replaced.read_bytes()
    replaced.write_bytes(zst_lines([{"id": "new-doc", "text": "A replaced object holds this new document text."}]))
    try:
        seen = len(web.requests())
        proc = run(snakemake, repo, env=env)
        out = proc.stdout + proc.stderr
        assert body_reads(seen) == {"/web/part-005.jsonl.zst"}
        assert set(re.findall(r"^\s+output: (.+)$", out, flags=re.M)) == {
            paths.curate_shard_dir("web", 5), paths.curate_split_dir("web"), target}
        assert [p.stat().st_mtime_ns for i, p in enumerate(shard_stats) if i != 5] == mtimes[:5] + mtimes[6:]
        third = read_json(repo / target / "stats.json")
        assert third["inputs"][5]["etag"] != first["inputs"][5]["etag"]
        assert third["inputs"][5]["size"] == replaced.stat().st_size
        docs = {r["text"]: r["id"] for f in sorted((repo / target).rglob("part-*.jsonl.zst")) for r in read_jsonl(f)}
        assert docs.get("A replaced object holds this new document text.") in ("new-doc", None)  # or held out
    finally:
        replaced.write_bytes(old)


def test_replaced_s3_object_changes_the_recorded_etag_and_the_documents(corpus, s3, tmp_path):
    key, client = "swap/doc.jsonl.zst", s3.client()
    client.put_object(Bucket=BUCKET, Key=key, Body=zst_lines([{"id": "v1", "text": "The first version of this object."}]))
    where, url = tmp_path / "remote", f"s3://{BUCKET}/{key}"
    first = run_curate(where, url)
    client.put_object(Bucket=BUCKET, Key=key, Body=zst_lines([{"id": "v2", "text": "The second version, uploaded later."}]))
    second = run_curate(where, url)
    assert first["docs"] == {"The first version of this object.": "v1"}
    assert second["docs"] == {"The second version, uploaded later.": "v2"}
    assert second["stats"]["inputs"][0]["etag"] == client.head_object(Bucket=BUCKET, Key=key)["ETag"] != \
        first["stats"]["inputs"][0]["etag"]


def proxied(server: str, s3, web, proxy: FlakyProxy, monkeypatch) -> str:
    """The big object's URL through `proxy` (S3: the endpoint comes from AWS_ENDPOINT_URL, as a lab sets it)."""
    if server == "http":
        return f"{proxy.url}/{BIG}"
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()  # a new client, through the proxy
    return f"s3://{BUCKET}/{BIG}"


@pytest.fixture
def proxy_to(s3, web):
    made: list[FlakyProxy] = []

    def make(server: str) -> FlakyProxy:
        made.append(FlakyProxy(s3.port if server == "s3" else web.port))
        return made[-1]

    yield make
    for p in made:
        p.close()
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("server", ["s3", "http"])
def test_connection_dropped_mid_object_is_retried_and_resumed(corpus, s3, web, server, proxy_to, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "CHUNK", 128 << 10)
    proxy = proxy_to(server)
    url = proxied(server, s3, web, proxy, monkeypatch)
    proxy.cut(after=200_000, times=2)  # the first two connections die inside a 128 kB body
    got = run_curate(tmp_path / "remote", url)
    assert proxy._cuts <= 0, "both cuts happened"
    same_documents(got, run_curate(tmp_path / "local", str(corpus / BIG)))
    assert got["stats"]["inputs"][0]["size"] == (corpus / BIG).stat().st_size


@pytest.mark.parametrize("server", ["s3", "http"])
def test_connection_dropped_every_time_fails_cleanly(corpus, s3, web, server, proxy_to, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF", remote.Backoff(attempts=3, first=0.05, most=0.1))
    proxy = proxy_to(server)
    url = proxied(server, s3, web, proxy, monkeypatch)
    monkeypatch.chdir(tmp_path)
    proxy.cut(after=100_000, times=10**6)  # every connection dies inside the object's body
    params = make_params(url)
    entry = input_entry(url)
    with pytest.raises(remote.RemoteError) as err:
        stages.call(params, "curate_shard", source="web", part="00000")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{url}: reading bytes ") and "failed 3 times" in message, message
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.jsonl.zst")), \
        "no shard, not even a partial one"


def test_object_replaced_while_read_is_refused(corpus, s3, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "CHUNK", 64 << 10)
    key, client = "swap/big.jsonl.zst", s3.client()
    client.put_object(Bucket=BUCKET, Key=key, Body=(corpus / BIG).read_bytes())
    url = f"s3://{BUCKET}/{key}"
    entry = input_entry(url)
    reader = Reader("web", "text", "id", 1 << 20, InvalidLog("web"))
    docs = reader.read(url, entry)
    next(docs)
    client.put_object(Bucket=BUCKET, Key=key, Body=(corpus / "web/part-000.jsonl.zst").read_bytes())
    with pytest.raises(remote.RemoteError, match=r"changed while being read"):
        list(docs)


def test_http_403_names_the_url(corpus, web, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url, what in ((f"{web.url}/private/*.jsonl", "listing"), (f"{web.url}/private/secret.jsonl", "stat")):
        with pytest.raises(remote.RemoteError) as err:
            stages.build(make_params(url), "curate", source="web")
        assert str(err.value).startswith(f"{url}: access denied (403, {what})"), err.value
    assert not Path("artifacts").exists()


def test_s3_listing_403_names_the_pattern(corpus, s3, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.chdir(tmp_path)
    for key, value in s3.credentials(s3.outsider).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{BUCKET}/web/*.jsonl.zst"
    try:
        with pytest.raises(remote.RemoteError) as err:
            stages.build(make_params(url), "curate", source="web")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert str(err.value).startswith(f"{url}: access denied (403, listing): An error occurred (AccessDenied) when "
                                     "calling the ListObjectsV2 operation"), err.value
    assert not Path("artifacts").exists()


def test_s3_read_403_with_config_file_credentials_is_one_line(corpus, s3, tmp_path):
    """Credentials from a profile in an AWS credentials file, allowed to list the bucket but not to read:
    the stage prints one line naming the object and exits 1."""
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[lister]\naws_access_key_id = {s3.lister[0]}\naws_secret_access_key = {s3.lister[1]}\n")
    study = tmp_path / "study"
    study.mkdir()
    (study / "params.yaml").write_text(json.dumps(make_params(f"s3://{BUCKET}/web/*.jsonl.zst").model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    cli = [sys.executable, "-m", "workflow"]
    subprocess.run([*cli, "dvc-yaml"], cwd=study, env={**env, **s3.env}, check=True, capture_output=True)
    proc = subprocess.run([*cli, "curate_shard", "--source", "web", "--part", "00000"], cwd=study, capture_output=True, text=True,
                          env={**env, "AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "lister",
                               "AWS_ENDPOINT_URL": s3.url, "AWS_DEFAULT_REGION": "us-east-1"})
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    url = f"s3://{BUCKET}/web/part-000.jsonl.zst"
    assert len(lines) == 1 and lines[0].startswith(f"error: [curate_shard] {url}: access denied (403, stat)"), proc.stderr
    assert not any(study.glob("artifacts/.curate/web/shard-*/*.zst"))


def test_remote_manifest_moves_only_when_an_object_changes(corpus, s3, tmp_path):
    """What the engines can track for remote inputs: the manifest file is rewritten (mtime and bytes) only
    when an object's ETag or size changed."""
    key, client = "manifest/doc.jsonl.zst", s3.client()
    body = zst_lines([{"id": "m1", "text": "The manifest test document, first version."}])
    client.put_object(Bucket=BUCKET, Key=key, Body=body)
    params = make_params(f"s3://{BUCKET}/manifest/*.jsonl.zst", str(corpus / "web/part-000.jsonl.zst"))
    entries = remote_manifest(params, "web")
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert entries == [{"url": f"s3://{BUCKET}/{key}", "size": head["ContentLength"], "etag": head["ETag"]}]  # local: none
    target = tmp_path / "inputs.json"
    assert write_manifest(entries, target)
    mtime = target.stat().st_mtime_ns
    client.put_object(Bucket=BUCKET, Key=key, Body=body)  # the same bytes again: same ETag
    assert not write_manifest(remote_manifest(params, "web"), target) and target.stat().st_mtime_ns == mtime
    client.put_object(Bucket=BUCKET, Key=key, Body=body + body)
    assert write_manifest(remote_manifest(params, "web"), target)
    assert json.loads(target.read_text())[0]["etag"] == client.head_object(Bucket=BUCKET, Key=key)["ETag"] != head["ETag"]
