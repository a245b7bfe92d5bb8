"""Remote inputs through fsspec: `s3://` (s3fs), `hf://` (huggingface_hub), `http(s)://`, any fsspec URL.

    expand(pattern)   the files a URL glob matches, listed on the server (sorted full URLs)
    describe(url)     what identifies the bytes: {url, size, etag | version_id | last_modified}
    open_url(entry)   a seekable buffered file reading the object in ranged requests of CHUNK bytes

Credentials and endpoints come from each filesystem's usual environment and config files (s3fs:
AWS_ACCESS_KEY_ID / AWS_PROFILE / ~/.aws, AWS_ENDPOINT_URL; hf://: HF_TOKEN or `hf auth login`), never
from params.yaml. A transient failure (connection refused, reset or dropped mid-object, timeout, HTTP
408/429/5xx) is retried with a bounded exponential back-off (BACKOFF); a read resumes at the byte where
it failed, and only while the object is unchanged. The last failure, or any other (403, 404), is one
RemoteError line naming the URL.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from glob import has_magic

from workflow.errors import StageError

CHUNK = 8 << 20  # bytes per ranged request (and the read buffer)
IDENTITY = (  # recorded key <- the info keys fsspec filesystems use for it, strongest first
    ("etag", ("ETag", "etag", "md5Hash", "blob_id")),  # S3/HTTP ETag, GCS md5, HF git blob id
    ("version_id", ("VersionId", "version_id")),
    ("last_modified", ("Last-Modified", "LastModified", "mtime", "updated")),
)
TRANSIENT_STATUS = {408, 425, 429}  # and every 5xx
TRANSIENT_NAMES = {  # exception classes, by name (aiohttp, botocore, fsspec are optional imports)
    "ClientConnectionError", "ClientPayloadError", "ServerDisconnectedError", "ClientOSError", "FSTimeoutError",
    "HTTPClientError", "IncompleteRead", "ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
    "ConnectionClosedError", "ResponseStreamingError", "ChunkedEncodingError",
}


@dataclass(frozen=True)
class Backoff:
    attempts: int = 5  # tries per request
    first: float = 0.5  # seconds before the second try; doubles each time
    most: float = 8.0  # longest single wait


BACKOFF = Backoff()


class RemoteError(StageError):
    """A remote file cannot be listed or read; the message is one line naming the URL."""


class NotFound(RemoteError):
    """The server says the object does not exist (404)."""


class _ShortRead(Exception):
    """A ranged response ended before the bytes it promised (a dropped connection the client did not see)."""


def is_url(path: str) -> bool:
    return "://" in path


def _fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # no filesystem for the protocol, or its package missing
        raise RemoteError(f"{url}: {_one_line(err)}") from err


def _http_error(err: BaseException | None) -> tuple[int | None, BaseException | None]:
    """The HTTP status behind an error and the exception carrying it (aiohttp, botocore, httpx/requests, or
    s3fs's and fsspec's translations of those, found through the cause chain), or (None, None)."""
    for _ in range(5):
        if err is None:
            break
        status = getattr(err, "status", None)
        response = getattr(err, "response", None)
        if not isinstance(status, int) and isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        elif not isinstance(status, int) and response is not None:
            status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status, err
        err = err.__cause__ or err.__context__
    return None, None


def transient(err: BaseException) -> bool:
    """Whether retrying the same request may succeed."""
    if isinstance(err, _ShortRead):
        return True
    status, _ = _http_error(err)  # fsspec's http raises FileNotFoundError for any failed HEAD: the status decides
    if status is not None:
        return status in TRANSIENT_STATUS or status >= 500
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(c.__name__ in TRANSIENT_NAMES for c in type(err).__mro__)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _failure(url: str, what: str, err: BaseException) -> RemoteError:
    status, carrier = _http_error(err)
    if status in (401, 403) or isinstance(err, PermissionError) and status is None:
        return RemoteError(f"{url}: access denied ({status or 403}, {what}): {_one_line(carrier or err)}; the credentials come from "
                           "the environment and config files (AWS_* or ~/.aws for s3://, HF_TOKEN for hf://), "
                           "never from params.yaml: check that they grant it")
    if status == 404 or isinstance(err, FileNotFoundError) and status is None:
        return NotFound(f"{url}: not found ({what}); check the path and that the object exists")
    return RemoteError(f"{url}: {what} failed: {type(err).__name__}: {_one_line(err)}")


def call(url: str, what: str, fn, before_retry=None):
    """`fn()`, retried with BACKOFF while it fails transiently (`before_retry()` runs before each retry);
    RemoteError naming `url` when it fails for good."""
    start = time.monotonic()
    for attempt in range(1, BACKOFF.attempts + 1):
        try:
            return fn()
        except RemoteError:
            raise
        except Exception as err:  # noqa: BLE001 - classified below
            if not transient(err):
                raise _failure(url, what, err) from err
            if attempt == BACKOFF.attempts:
                raise RemoteError(f"{url}: {what} failed {attempt} times in {time.monotonic() - start:.1f} s, last with "
                                  f"{type(err).__name__}: {_one_line(err)}; check the network or the server and rerun") from err
        time.sleep(min(BACKOFF.first * 2 ** (attempt - 1), BACKOFF.most))
        if before_retry is not None:
            before_retry()


def expand(pattern: str) -> list[str]:
    """Full URLs of the files `pattern` matches (a glob is expanded by listing the server), sorted."""
    fs, path = _fs(pattern)
    fs.invalidate_cache()  # list the server now, not what this process listed before
    if has_magic(path):
        found = call(pattern, "listing", lambda: fs.glob(path, detail=True))
        files = [p for p, info in found.items() if info.get("type", "file") == "file"]
    else:
        try:
            info = call(pattern, "stat", lambda: fs.info(path))
        except NotFound:
            return []
        files = [path] if info.get("type", "file") == "file" else []
    return sorted(fs.unstrip_protocol(p) if not is_url(p) else p for p in files)


def identity(info: dict) -> dict:
    """The strongest identity of an object's bytes its filesystem reports (empty when none)."""
    for key, names in IDENTITY:
        value = next((info[n] for n in names if info.get(n)), None)
        if value is not None:
            return {key: str(value)}
    return {}


def describe(url: str) -> dict:
    """`{url, size, <identity>}` of one remote file, from one metadata request (HEAD)."""
    fs, path = _fs(url)
    fs.invalidate_cache(path)  # s3fs answers from its listing cache otherwise
    info = call(url, "stat", lambda: fs.info(path))
    if info.get("type", "file") != "file":
        raise RemoteError(f"{url}: is a {info.get('type')}, not a file")
    if info.get("size") is None:
        raise RemoteError(f"{url}: the server does not report the object's size (no Content-Length); cannot read it in ranges")
    return {"url": url, "size": int(info["size"]), **identity(info)}


class RangeReader(io.RawIOBase):
    """The bytes of `entry["url"]` through ranged requests of at most CHUNK bytes; each is retried and resumed
    where it failed, after checking the object is still the one `entry` describes. While the caller reads
    sequentially, the next range is fetched in the background (fetching overlaps parsing)."""

    def __init__(self, entry: dict):
        from concurrent.futures import ThreadPoolExecutor

        self.entry, self.size, self.pos = entry, entry["size"], 0
        self.fs, self.path = _fs(entry["url"])
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arbor-read-ahead")
        self._ahead = None  # (start, Future of the bytes from start)
        self._last_end = 0  # where the previous read ended: a read starting there is sequential

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def readinto(self, buf) -> int:
        start = self.pos
        if start >= self.size:
            return 0
        ahead, self._ahead = self._ahead, None
        sequential = start == self._last_end
        if ahead is not None and ahead[0] == start:
            data = ahead[1].result()[:len(buf)]
        else:
            if ahead is not None:
                ahead[1].cancel()
            data = self._fetch(start, min(start + len(buf), start + CHUNK, self.size))
        self.pos = self._last_end = end = start + len(data)
        buf[:len(data)] = data
        if sequential and end < self.size:
            self._ahead = (end, self._pool.submit(self._fetch, end, min(end + CHUNK, self.size)))
        return len(data)

    def _fetch(self, start: int, end: int) -> bytes:
        return call(self.entry["url"], f"reading bytes {start}-{end} of {self.size}",
                    lambda: self._range(start, end), before_retry=lambda: check_unchanged(self.entry))

    def _range(self, start: int, end: int) -> bytes:
        data = self.fs.cat_file(self.path, start=start, end=end)
        if len(data) > end - start:
            raise RemoteError(f"{self.entry['url']}: the server ignores HTTP Range requests (sent {len(data)} bytes for "
                              f"{end - start}); serve the files from a server that supports ranges")
        if len(data) < end - start:
            raise _ShortRead(f"got {len(data)} of {end - start} bytes")
        return data

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


def check_unchanged(entry: dict) -> None:
    """RemoteError when the object at `entry["url"]` no longer is the one `entry` describes (replaced, resized)."""
    now = describe(entry["url"])
    if any(entry.get(k) != v for k, v in now.items()):
        was, new = ({k: v for k, v in e.items() if k != "url"} for e in (entry, now))
        raise RemoteError(f"{entry['url']}: changed while being read ({was} -> {new}); rerun to read the new version")


def open_url(entry: dict) -> io.BufferedReader:
    """A buffered, seekable reader of the remote file `entry` (from `describe`); nothing is copied locally."""
    return io.BufferedReader(RangeReader(entry), buffer_size=CHUNK)
