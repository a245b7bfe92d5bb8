"""Debian packages the tests need, installed on first use (CI runs as root on a clean Debian machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class Unavailable(Exception):
    """The packages are missing and cannot be installed here; the message says why."""


def ensure(binaries: list[str], packages: list[str], timeout: float = 900) -> None:
    """`apt-get install packages` when one of `binaries` is missing; Unavailable when that cannot be done.
    Waits for a dpkg lock another installer holds (pytest-xdist workers may install at once)."""
    missing = [b for b in binaries if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"{', '.join(missing)} missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for cmd in (["apt-get", *lock, "update", "-qq"], ["apt-get", *lock, "install", "-y", "-qq", *packages]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
