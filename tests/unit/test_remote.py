"""Remote reads: which failures are retried, how long, and what the user reads when they are not cured.

Against real servers: tests/integration/test_remote_sources.py."""

from __future__ import annotations

import re

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from workflow.curate import remote
from workflow.params import ParamsError, parse_params


def http_error(status: int) -> aiohttp.ClientResponseError:
    info = aiohttp.RequestInfo(URL("https://h/x"), "GET", CIMultiDict(), URL("https://h/x"))
    return aiohttp.ClientResponseError(info, (), status=status, message="status")


def fsspec_style(cause: BaseException) -> FileNotFoundError:
    """fsspec's http filesystem raises FileNotFoundError for any failed HEAD, the response error as its cause."""
    try:
        raise FileNotFoundError("http://h/x") from cause
    except FileNotFoundError as err:
        return err


@pytest.mark.parametrize("err, retried", [
    (ConnectionResetError(), True), (TimeoutError(), True), (aiohttp.ClientPayloadError("cut"), True),
    (aiohttp.ServerDisconnectedError(), True), (http_error(503), True), (http_error(429), True),
    (fsspec_style(http_error(502)), True), (remote._ShortRead("short"), True),
    (http_error(403), False), (http_error(404), False), (PermissionError("denied"), False),
    (FileNotFoundError("gone"), False), (fsspec_style(http_error(403)), False), (ValueError("bad"), False),
])
def test_transient(err, retried):
    assert remote.transient(err) is retried


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF", remote.Backoff(attempts=4, first=0.01, most=0.02))


def failing(errors: list[BaseException], result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


def test_transient_failures_are_retried_until_success(fast):
    fn, calls = failing([ConnectionResetError(), http_error(503), aiohttp.ClientPayloadError("cut")])
    assert remote.call("s3://b/k", "stat", fn) == "ok" and len(calls) == 4


def test_retries_are_bounded_and_end_in_one_line(fast):
    fn, calls = failing([ConnectionResetError("reset\nby peer")] * 10)
    with pytest.raises(remote.RemoteError) as err:
        remote.call("s3://b/k", "stat", fn)
    assert len(calls) == 4
    assert str(err.value).startswith("s3://b/k: stat failed 4 times in ") and "\n" not in str(err.value)
    assert "ConnectionResetError: reset by peer" in str(err.value)


@pytest.mark.parametrize("err, message", [
    (http_error(403), "https://h/x: access denied (403, stat)"),
    (fsspec_style(http_error(403)), "https://h/x: access denied (403, stat)"),
    (fsspec_style(http_error(404)), "https://h/x: not found (stat)"),
    (FileNotFoundError("x"), "https://h/x: not found (stat)"),
])
def test_permanent_failures_are_not_retried(fast, err, message):
    fn, calls = failing([err] * 10)
    with pytest.raises(remote.RemoteError, match=f"^{re.escape(message)}"):
        remote.call("https://h/x", "stat", fn)
    assert len(calls) == 1


def test_before_retry_can_refuse_a_changed_object(fast):
    fn, calls = failing([ConnectionResetError()] * 10)

    def changed():
        raise remote.RemoteError("https://h/x: changed while being read")

    with pytest.raises(remote.RemoteError, match="changed while being read"):
        remote.call("https://h/x", "read", fn, before_retry=changed)
    assert len(calls) == 1


def test_identity_prefers_etag_then_version_then_date():
    assert remote.identity({"ETag": '"abc"', "VersionId": "v1", "LastModified": "d"}) == {"etag": '"abc"'}
    assert remote.identity({"VersionId": "v1", "Last-Modified": "d"}) == {"version_id": "v1"}
    assert remote.identity({"Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"}) == {"last_modified": "Tue, 01 Dec 2026 10:00:00 GMT"}
    assert remote.identity({"blob_id": "0123abcd"}) == {"etag": "0123abcd"}  # hf://: the git blob id
    assert remote.identity({"size": 3}) == {}


def test_unknown_protocol_is_one_line():
    with pytest.raises(remote.RemoteError, match=r"^nosuch://b/x\.jsonl: "):
        remote.expand("nosuch://b/x.jsonl")


@pytest.mark.parametrize("url", ["https://user:secret@example.org/x.jsonl", "s3://KEY:SECRET@bucket/x.jsonl",
                                 "https://h/x.parquet?X-Amz-Credential=a&X-Amz-Signature=b", "https://h/x.jsonl?token=t"])
def test_credentials_in_params_are_refused(url):
    with pytest.raises(ParamsError, match=r"sources\.web\.paths\.0: the URL carries credentials"):
        parse_params({"sources": {"web": {"paths": [url], "domain": "web"}}, "trunk": {"checkpoints": [1]}})


def test_plain_urls_are_accepted():
    params = parse_params({"sources": {"web": {"paths": ["s3://b/*.parquet", "https://h/x.jsonl?page=2",
                                                         "hf://datasets/org/name/data/*.parquet"], "domain": "web"}},
                           "trunk": {"checkpoints": [1]}})
    assert len(params.sources["web"].paths) == 3
