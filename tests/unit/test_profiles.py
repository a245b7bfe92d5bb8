"""Snakemake profiles as a checkout's users type them: plain `snakemake` runs the local settings
(`profiles/default`, Snakemake's workflow profile) and `snakemake --profile cluster` finds the SLURM profile
(the `cluster` link at the top of the checkout); the site's partition and account have one place."""

from __future__ import annotations

import sys

import pytest
import yaml

from tests.conftest import ROOT, run

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--dry-run"]


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.setenv("SLURM_CONF", "/dev/null")  # the executor plugin asks scontrol at import: fail at once


def test_plain_snakemake_uses_the_local_profile(repo):
    done = run(SNAKEMAKE, repo)
    out = done.stdout + done.stderr
    assert "Using workflow specific profile profiles/default for setting default command line arguments" in out
    assert "Shell command: python -m workflow" in out  # printshellcmds, from the profile


def test_profile_cluster_works_as_written(repo):
    done = run([*SNAKEMAKE, "--profile", "cluster"], repo)
    out = done.stdout + done.stderr
    assert "Using profiles cluster and workflow specific profile profiles/default" in out
    assert "mem_mb=4000" in out and "runtime=60" in out  # the cluster profile's default-resources


def test_site_settings_have_one_place():
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    cluster_text = (ROOT / "profiles/cluster/config.yaml").read_text()
    cluster = yaml.safe_load(cluster_text)
    assert cluster["executor"] == "slurm" and (ROOT / "cluster").resolve() == (ROOT / "profiles/cluster").resolve()
    assert "# slurm_partition:" in cluster_text and "# slurm_account:" in cluster_text  # under default-resources
    # the workflow profile wins key by key over --profile: it must not hold what the cluster profile sets
    assert not set(default) & set(cluster), set(default) & set(cluster)
    assert "default-resources" not in default and "executor" not in default
