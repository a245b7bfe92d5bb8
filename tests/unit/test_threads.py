"""Threads on a shared machine: each pytest-xdist worker's jobs get the worker's share of the cores
(`tests/conftest.py`), and a job takes its intra-op threads from ARBOR_THREADS (`workflow.train.distributed`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_job_takes_its_threads_from_arbor_threads():
    code = "from workflow.train import distributed; import torch; distributed.set_threads(); print(torch.get_num_threads())"
    for n in ("1", "2"):
        env = {**os.environ, "ARBOR_THREADS": n, "OMP_NUM_THREADS": "3"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
        assert out.stdout.split()[-1] == n


@pytest.mark.parametrize("workers", [None, 2])
def test_each_xdist_worker_gets_its_share_of_the_cores(tmp_path, workers):
    (tmp_path / "test_env.py").write_text(
        "import os\n\ndef test_env():\n"
        f"    open({str(tmp_path / 'seen')!r}, 'a').write(repr((os.environ.get('ARBOR_THREADS'), "
        "os.environ.get('OMP_NUM_THREADS'))) + '\\n')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ARBOR_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    xdist = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", *xdist,
                    "--rootdir", str(tmp_path), str(tmp_path / "test_env.py")], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    seen = (tmp_path / "seen").read_text().split("\n")[0]
    share = str(max(1, len(os.sched_getaffinity(0)) // workers)) if workers else None
    assert seen == repr((share, share))
