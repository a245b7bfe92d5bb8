"""Shared by the bench scripts: result rows (`--json PATH`), targets, and a throwaway copy of the repo.

Every script keeps its own human-readable output and, given `--json PATH`, also writes
`{"script", "skipped", "rows": [Row, ...]}` there; `bench/run_all.py` collects these into one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Row:
    """One figure with its baseline. `target` reads like ">= 1.5" or "<= 1.1" and applies to `ratio`
    (to `value` when there is no ratio); `met` is None without a target."""

    figure: str
    value: float | None
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if self.target is not None and self.met is None:
            self.met = meets(self.ratio if self.ratio is not None else self.value, self.target)


def meets(x: float | None, target: str) -> bool | None:
    """Whether `x` meets a target like ">= 1.5" (operators >=, <=, >, <); None when `x` is missing."""
    op, _, bound = target.strip().partition(" ")
    checks = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}
    if op not in checks or not bound:
        raise ValueError(f"target {target!r}: expected '<op> <number>' with op in {', '.join(checks)}")
    return None if x is None else checks[op](float(x), float(bound))


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", type=os.path.abspath,  # absolute: the scripts chdir into temp dirs
                        help="also write the figures as JSON rows (for bench/run_all.py)")


def write_result(path: str | None, script: str, rows: list[Row], skipped: str | None = None) -> None:
    """Write one script's rows (or the reason it did not run) to `path`; nothing when `path` is None."""
    if path is None:
        return
    from workflow.io import write_json

    write_json(path, {"script": script, "skipped": skipped, "rows": [dataclasses.asdict(r) for r in rows]})


def run(cmd: list[str], cwd: Path, **kw: Any) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's venv first on PATH; exit with its output when it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, **kw)
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} exited {proc.returncode} in {cwd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_repo(dest: Path, params: str | None = None) -> Path:
    """Copy the working tree (tracked + untracked, not ignored) into `dest` as a fresh git repo (the
    DVC project comes along in .dvc/), with `params` (YAML text) as params.yaml when given."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if params is not None:
        (dest / "params.yaml").write_text(params)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.email=bench@arbor.invalid", "-c", "user.name=bench", "commit", "-qm", "study"], dest)
    return dest
