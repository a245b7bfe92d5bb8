"""Errors a user can act on. The CLI prints them as one line and exits non-zero, without a traceback."""


class StageError(Exception):
    """A stage cannot run on its inputs (missing, stale or corrupt artifact); the message says what to do."""
