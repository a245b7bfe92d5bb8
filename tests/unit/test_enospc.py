"""A full disk during a write: the previous artifact stays byte-identical, no temporary is left, and the
error names what was being written (one line from the CLI, exit 1).

Each test runs twice: on a real, small tmpfs (needs the right to mount; skipped otherwise) and with
`open` patched so writes under the directory fail with ENOSPC (runs everywhere).
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import hashlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_tokenize import HELDOUT, TEXTS, make_params, write_curated
from workflow import stages
from workflow import cli, paths
from workflow.errors import DiskFullError
from workflow.io import atomic_dir, atomic_file, write_json, write_jsonl_zst

TMPFS_BYTES = 16 << 20


class Disk:
    """A directory whose writes fail with ENOSPC once `fill()` has been called."""

    def __init__(self, root: Path, kind: str, monkeypatch):
        self.root, self.kind, self.monkeypatch = root, kind, monkeypatch

    def fill(self, free: int = 0, names: str = "*") -> None:
        """From now on, writes under `root` fail once `free` more bytes are written (injected: only to files
        matching `names`; tmpfs: anywhere, a page at a time)."""
        if self.kind == "tmpfs":
            st = os.statvfs(self.root)
            with open(self.root / "ballast", "wb") as f:
                f.write(b"\0" * (st.f_bavail * st.f_frsize - free))
            return
        left = [free]
        real_open = io.open

        class Budgeted:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
                if size > left[0]:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left[0] -= size
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def patched_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if (isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
                    and Path(os.path.abspath(file)).is_relative_to(self.root)
                    and fnmatch.fnmatch(Path(file).name, names)):
                return Budgeted(f)
            return f

        self.monkeypatch.setattr(builtins, "open", patched_open)
        self.monkeypatch.setattr(io, "open", patched_open)


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "tmpfs":
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(root)],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(root)], check=True))
    yield Disk(root, request.param, monkeypatch)
    monkeypatch.undo()  # `open` back before the tmpfs goes


def snapshot(path: Path) -> dict[str, str]:
    """SHA-256 of every file at `path` (a file or a directory), by relative name."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_atomic_file(disk):
    path = disk.root / "data.jsonl.zst"
    write_jsonl_zst(path, [{"n": i} for i in range(10)])
    before = snapshot(path)
    disk.fill()
    with pytest.raises(DiskFullError, match=rf"disk full \(No space left on device\) while writing {re.escape(str(path))}:"):
        write_jsonl_zst(path, ({"text": os.urandom(64).hex(), "n": i} for i in range(100_000)))
    assert snapshot(path) == before and not temporaries(disk.root)


def test_atomic_dir(disk):
    path = disk.root / "model"
    with atomic_dir(path) as tmp:
        write_json(tmp / "meta.json", {"step": 1})
    before = snapshot(path)
    disk.fill()
    with pytest.raises(DiskFullError, match=rf"while writing {re.escape(str(path))}:"):  # the dir, not the file inside it
        with atomic_dir(path) as tmp:
            write_json(tmp / "meta.json", {"step": 2})
            with atomic_file(tmp / "weights.bin", "wb") as f:
                f.write(os.urandom(TMPFS_BYTES))
    assert snapshot(path) == before and not temporaries(disk.root)


@pytest.fixture
def token_study(disk, monkeypatch):
    """cwd = a tokenize study on `disk` with its tokens written once (the previous artifacts)."""
    monkeypatch.chdir(disk.root)
    monkeypatch.setenv("ARBOR_TOKENIZE_WORKERS", "1")
    params = make_params()
    Path("params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json", exclude_unset=True)))
    write_curated("web", TEXTS[:20], HELDOUT)
    stages.call(params, "tokenizer")
    stages.call(params, "tokenize", domain="webtext")
    write_curated("web", TEXTS, HELDOUT)  # the next run would write other tokens
    return params


def tokens(domain: str = "webtext") -> dict[str, str]:
    return {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in paths.tokens_files(domain)}


def test_tokenize_from_the_cli(disk, token_study, capsys):
    before = tokens()
    disk.fill()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tokenize", "--domain", "webtext"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: [tokenize] disk full (No space left on device) while writing "
                                           f"{paths.tokens_prefix('webtext')}.*: nothing was replaced")
    assert tokens() == before and not temporaries(disk.root)


@pytest.mark.parametrize("disk", ["injected"], indirect=True)  # a tmpfs cannot stop exactly this write
def test_tokenize_publish(disk, token_study):
    """The disk fills up at the last write (the stats file): still nothing replaced."""
    before = tokens()
    disk.fill(names="*.stats.json*")
    with pytest.raises(DiskFullError, match="while writing artifacts/tokens/webtext"):
        stages.call(token_study, "tokenize", domain="webtext")
    assert tokens() == before and not temporaries(disk.root)


def test_checkpoint_save(disk, train_study):
    from workflow.train.loop import Session

    session = Session(train_study())
    session.train_step()
    path = disk.root / "trunk/step-1"
    session.save(path, session.meta("main@1", "trunk", "fp", {}))
    before = snapshot(path)
    session.train_step()
    disk.fill()
    with pytest.raises(DiskFullError, match=rf"while writing {re.escape(str(path))}:"):
        session.save(path, session.meta("main@2", "trunk", "fp", {}))
    assert snapshot(path) == before and not temporaries(disk.root)


def test_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """`<name>.tmp-<pid>` / `.old-<pid>` of a dead process go; a live process's and other names stay."""
    import subprocess

    from workflow.io import atomic_dir, atomic_file

    dead = subprocess.Popen(["true"])
    dead.wait()
    target = tmp_path / "model"
    (tmp_path / f"model.tmp-{dead.pid}").mkdir()
    (tmp_path / f"model.tmp-{dead.pid}" / "weights").write_bytes(b"x" * 100)
    (tmp_path / f"model.old-{dead.pid}").mkdir()
    (tmp_path / "model.tmp-1").mkdir()                       # pid 1 is alive
    (tmp_path / "model-b.tmp-1").mkdir()
    (tmp_path / "stats.json.tmp-{}".format(dead.pid)).write_text("{")
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_bytes(b"y")
    with atomic_file(tmp_path / "stats.json") as f:
        f.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model-b.tmp-1", "model.tmp-1", "stats.json"]
