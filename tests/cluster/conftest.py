"""The SLURM cluster fixture: a real two-node cluster on this machine (tests/cluster/slurm.py) for the module's tests.

Where SLURM cannot be installed the tests are skipped with a reason that names what is then untested, and
`make test` repeats it in its last lines (tests/conftest.py); with ARBOR_REQUIRE_SLURM=1 (CI, `.ci/run`) they fail.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.cluster.slurm import LocalSlurm, Unavailable

LOST_CLAIMS = ("the README's SLURM claims are untested: `snakemake --profile cluster` on a real SLURM cluster, "
               "params.yaml resources reaching sbatch, one job per trunk segment, training across two nodes, "
               "a segment stopped by its walltime and by a requeue resuming where it saved")
SKIP_PREFIX = "SLURM cluster tests not run"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munge + slurmctld + two slurmd on this machine (packages apt-installed where missing), stopped by pid afterwards."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Unavailable as err:
        reason = f"{SKIP_PREFIX}: SLURM cannot be installed here ({err}); {LOST_CLAIMS}"
        if os.environ.get("ARBOR_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (ARBOR_REQUIRE_SLURM=1)", pytrace=False)
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    yield cluster
    cluster.stop()
