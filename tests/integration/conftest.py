"""Servers for the remote tests (tests/servers.py), one per test module, stopped when it ends."""

from __future__ import annotations

import pytest

from tests.servers import HttpServer, S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with IAM checks on; its allowed user's credentials and endpoint are in the environment
    (AWS_* variables, as a lab sets them) for the module's tests."""
    with S3Server(tmp_path_factory.mktemp("s3") / "moto.log") as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        yield server


@pytest.fixture(scope="module")
def web_root(tmp_path_factory):
    return tmp_path_factory.mktemp("www")


@pytest.fixture(scope="module")
def web(web_root, tmp_path_factory):
    """An HTTP server over `web_root` (403 under /private/), with a request log."""
    with HttpServer(web_root, tmp_path_factory.mktemp("www-log") / "requests.tsv") as server:
        yield server
