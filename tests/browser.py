"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for tests of pages arbor writes.

    with Chromium(profile_dir) as browser:
        page = browser.open("file:///.../summary.html", CHECK_IMAGES)   # {"value": ..., "screenshot": png bytes}

Started with the flags a closed network needs (no background networking, no first-run, a new empty
profile); the DevTools port is read from the profile's DevToolsActivePort file. Talks over aiohttp's
websocket client (already a dependency), one page at a time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.servers import Process

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1200,900", "--remote-debugging-port=0", "about:blank"]
BINARIES = ["chromium"]
PACKAGES = ["chromium"]

# Every <img>: loaded, decoded to a non-empty bitmap, laid out at a non-zero size; and the text on the page.
CHECK_IMAGES = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                                  height: i.naturalHeight, shown: i.getBoundingClientRect().width})),
  text: document.body ? document.body.innerText : "",
  height: document.documentElement.scrollHeight})"""


class Chromium(Process):
    def __init__(self, profile: Path, binary: str | None = None):
        self.binary = binary or shutil.which("chromium") or "chromium"
        self.profile = Path(profile)
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.binary, f"--user-data-dir={self.profile}", *FLAGS],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = self._port()

    def _port(self, timeout: float = 60) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode} at start")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError(f"{self.binary} did not open its DevTools port within {timeout} s")

    def open(self, url: str, expression: str, timeout: float = 60) -> dict:
        """Load `url` in a new tab; the JSON value of `expression` once it has loaded, and a full-page PNG."""
        return asyncio.run(asyncio.wait_for(self._open(url, expression), timeout))

    async def _open(self, url: str, expression: str) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as r:
                target = await r.json()
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    ids = itertools.count(1)

                    async def send(method: str, **params) -> dict:
                        msg_id = next(ids)
                        await ws.send_json({"id": msg_id, "method": method, "params": params})
                        while True:
                            msg = json.loads((await ws.receive()).data)
                            if msg.get("id") == msg_id:
                                if "error" in msg:
                                    raise RuntimeError(f"{method}: {msg['error']}")
                                return msg["result"]
                            if msg.get("method") == "Page.loadEventFired":
                                loaded.set()

                    loaded = asyncio.Event()
                    await send("Page.enable")
                    nav = await send("Page.navigate", url=url)
                    if nav.get("errorText"):
                        raise RuntimeError(f"{url}: {nav['errorText']}")
                    while not loaded.is_set():
                        msg = json.loads((await ws.receive()).data)
                        if msg.get("method") == "Page.loadEventFired":
                            loaded.set()
                    result = await send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
                    shot = await send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                    return {"value": json.loads(result["result"]["value"]), "screenshot": base64.b64decode(shot["data"])}
            finally:
                async with http.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}"):
                    pass

