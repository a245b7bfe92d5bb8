"""Errors a user can act on. The CLI prints them as one line and exits non-zero, without a traceback."""

import errno
import os


class StageError(Exception):
    """A stage cannot run on its inputs (missing, stale or corrupt artifact); the message says what to do."""


class DiskFullError(StageError):
    """The disk (or quota) filled up while writing an artifact; the atomic writers replaced nothing."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        if path is None:
            super().__init__(f"disk full ({reason}): free some space and rerun")
        else:
            super().__init__(f"disk full ({reason}) while writing {os.fspath(path)}: nothing was replaced "
                             f"(its previous version, if any, is intact); free some space and rerun")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE = 1 << 20  # bytes left on a file system that count as none


def disk_full(exc: BaseException, path: str | os.PathLike | None) -> BaseException:
    """`exc` as a DiskFullError naming `path` (the artifact being written) when a full disk or quota
    caused it, else `exc` itself: `raise disk_full(err, path)`, before removing the temporaries.

    The cause is an ENOSPC/EDQUOT found through `raise ... from` / context chains, torch.distributed.checkpoint's
    per-rank failures, or the message of an error that crossed a process boundary (megatron's checkpoint
    writer, other ranks) or came from Rust (tokenizers). C++ writers (`torch.save(obj, path)`: "basic_ios::clear: iostream error") lose the
    errno; for those, a file system holding `path` with less than LOW_SPACE left is the cause."""
    reason = _disk_full_reason(exc)
    if (reason is None and path is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))
            and _space_left(path) < LOW_SPACE):
        reason = os.strerror(errno.ENOSPC)
    return exc if reason is None else DiskFullError(reason, path)


def _space_left(path: str | os.PathLike) -> int:
    """Bytes an unprivileged write may still use on the file system of `path` (or of its nearest existing parent)."""
    where = os.path.abspath(path)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def _disk_full_reason(exc: BaseException) -> str | None:
    seen: set[int] = set()
    todo: list = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e.reason
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return os.strerror(e.errno)
        for code in DISK_FULL:  # Python's and Rust's (tokenizers) wording
            if f"[Errno {code}]" in str(e) or f"(os error {code})" in str(e):
                return os.strerror(code)
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint.CheckpointException
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        todo += [e.__cause__, e.__context__]
    return None
