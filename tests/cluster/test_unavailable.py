"""Where SLURM cannot be installed the cluster tests do not vanish: the run's last lines say what is untested,
and with ARBOR_REQUIRE_SLURM=1 (CI) the run fails."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

WHY = "apt-get: no network (simulated)"


def pytest_run(**env) -> subprocess.CompletedProcess:
    """`pytest tests/cluster/test_slurm.py` on a machine that cannot install SLURM (ARBOR_TEST_SLURM_UNAVAILABLE)."""
    return subprocess.run([sys.executable, "-m", "pytest", "tests/cluster/test_slurm.py", "-p", "no:cacheprovider", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ARBOR_TEST_SLURM_UNAVAILABLE": WHY, **env})


def test_skipped_cluster_tests_are_named_in_the_last_lines():
    done = pytest_run(ARBOR_REQUIRE_SLURM="0")
    assert done.returncode == 0, done.stdout[-3000:]
    last = done.stdout.strip().splitlines()[-3:]  # after pytest's own summary of skips
    assert "SLURM cluster tests skipped" in last[0] and "skipped in" in last[2] and "passed" not in last[2], last
    assert WHY in last[1] and "untested" in last[1] and "training across two nodes" in last[1], last


def test_ci_fails_instead_of_skipping():
    done = pytest_run(ARBOR_REQUIRE_SLURM="1")
    assert done.returncode != 0 and WHY in done.stdout, done.stdout[-3000:]
