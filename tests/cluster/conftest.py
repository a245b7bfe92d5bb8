"""The SLURM cluster fixture: a real one-node cluster (tests/cluster/slurm.py) for the module's tests."""

from __future__ import annotations

import sys

import pytest

from tests.cluster.slurm import LocalSlurm, Unavailable


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munge + slurmctld + slurmd on this machine (packages apt-installed where missing), stopped by pid afterwards."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Unavailable as err:
        print(f"SLURM unavailable: {err}", file=sys.stderr)
        pytest.skip(f"SLURM cannot be installed here: {err}")
    yield cluster
    cluster.stop()
