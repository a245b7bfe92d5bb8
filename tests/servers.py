"""Real servers on 127.0.0.1 for the remote-source tests, each started and stopped by its fixture.

    S3Server     moto's server mode (`moto_server`, the S3 HTTP API) with IAM authentication on: a user
                 allowed everything (its keys in `env`), one that may only list (`lister`) and one
                 allowed nothing (`outsider`), for 403s
    HttpServer   aiohttp's static file server over a directory (Range requests, ETags, index pages),
                 answering 403 under /private/ and logging every request (method, path, Range)
    FlakyProxy   a TCP proxy in front of either that drops connections mid-response when armed

`python -m tests.servers http ROOT PORT LOG` runs the HTTP server (HttpServer starts it that way).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

def _allow(action: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class Process:
    """A server process the tests start: a context manager that stops it (terminate, then kill)."""

    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class S3Server(Process):
    """`moto_server` on a free port; `env` holds the allowed user's credentials and the endpoint."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.proc, "moto_server")
        self.admin = self._user("arbor", _allow("*"))
        self.lister = self._user("lister", _allow("s3:ListBucket"))
        self.outsider = self._user("outsider", None)
        import requests

        requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()  # IAM checks on
        self.env = self.credentials(self.admin)

    def credentials(self, keys: tuple[str, str]) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1], "AWS_ENDPOINT_URL": self.url,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def _user(self, name: str, policy: dict | None) -> tuple[str, str]:
        iam = self.client("iam", ("setup", "setup"))
        iam.create_user(UserName=name)
        if policy:
            iam.put_user_policy(UserName=name, PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def client(self, service: str = "s3", keys: tuple[str, str] | None = None):
        import boto3

        keys = keys or self.admin
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=keys[0], aws_secret_access_key=keys[1])


class HttpServer(Process):
    """A directory served over HTTP on a free port (`python -m tests.servers http`); `requests()` reads its log."""

    def __init__(self, root: Path, log: Path):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.servers", "http", str(root), str(self.port), str(log)],
                                     cwd=Path(__file__).resolve().parents[1], stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.proc, "the HTTP server")

    def requests(self) -> list[tuple[str, str, str]]:
        """(method, path, Range header or '') of every request so far."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [tuple(line.split("\t")) for line in lines]


def _serve_http(root: str, port: int, log: str) -> None:
    from aiohttp import web

    @web.middleware
    async def logged(request, handler):
        with open(log, "a") as f:
            f.write(f"{request.method}\t{request.path}\t{request.headers.get('Range', '')}\n")
        if request.path.startswith("/private/"):
            raise web.HTTPForbidden(text="forbidden")
        return await handler(request)

    app = web.Application(middlewares=[logged])
    app.router.add_static("/", root, show_index=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class FlakyProxy:
    """A TCP proxy to 127.0.0.1:`target`. `cut(after, times)`: each of the next `times` connections is closed
    once `after` bytes of responses crossed it (a dropped connection mid-object); `sent` counts response bytes."""

    def __init__(self, target: int):
        self.target, self.sent, self._cuts, self._after = target, 0, 0, 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, after: int, times: int) -> None:
        with self._lock:
            self._after, self._cuts = after, times

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                limit = self._after if self._cuts > 0 else None
                self._cuts -= 1 if self._cuts > 0 else 0
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, None, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None, count: bool) -> None:
        passed = 0
        try:
            while data := src.recv(65536):
                if limit is not None and passed + len(data) > limit:
                    dst.sendall(data[:max(limit - passed, 0)])
                    break
                dst.sendall(data)
                passed += len(data)
                if count:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()


if __name__ == "__main__" and sys.argv[1:2] == ["http"]:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _serve_http(sys.argv[2], int(sys.argv[3]), sys.argv[4])
