"""Few submissions on SLURM: the cluster profile bundles small jobs (Snakemake job groups), so many input
files make few `sbatch` calls. Real SLURM (the module's cluster), a source of 6 input files, one per job."""

from __future__ import annotations

import json
import re
import sys

import pytest
import zstandard

from tests.cluster.study import micro_params
from tests.cluster.test_slurm import squeue, submissions
from tests.conftest import ROOT, copy_repo, run
from workflow import paths

pytestmark = pytest.mark.slow

FILES, BUNDLE = 6, 4
FLAGS = ["--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
         "--seconds-between-status-checks", "2"]


def minutes_of(limit: str) -> int:
    """squeue's time limit ([days-]hours:minutes:seconds, or minutes:seconds) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes = (parts[0], parts[1]) if len(parts) == 3 else (0, parts[0])
    return int(days or 0) * 1440 + hours * 60 + minutes


def test_curation_jobs_go_to_slurm_in_bundles(slurm, tmp_path):
    params = micro_params()
    params["sources"]["prose"]["paths"] = ["raw/*.jsonl"]
    params["curation"]["files_per_job"] = 1
    repo = copy_repo(tmp_path / "repo", params)
    docs = zstandard.decompress((ROOT / "data/sample/prose/jargon_file.jsonl.zst").read_bytes(),
                                max_output_size=1 << 30).decode().splitlines()
    (repo / "raw").mkdir()
    for i in range(FILES):  # a real corpus in many files: each holds a slice of the jargon file's documents
        (repo / "raw" / f"{i:03d}.jsonl").write_text("\n".join(docs[i::FILES][:20]) + "\n")
    targets = [paths.curate_shard_dir("prose", f"{i:05d}") for i in range(FILES)]
    # the profile's bundle size (32) made small enough for a test: 6 jobs in ceil(6 / 4) = 2 bundles
    proc = run([sys.executable, "-m", "snakemake", "--profile", "cluster", *FLAGS,
                "--group-components", f"curate_shard={BUNDLE}", "--", *targets], repo, timeout=480)
    log = proc.stdout + proc.stderr
    jobs = submissions(log)
    shard_logs = [p for p in jobs.values() if "group_curate_shard" in str(p)]
    assert len(jobs) == len(shard_logs) == 2, log
    # each bundle asks SLURM for its jobs side by side in the profile's 4 slots (as many as the submitting host
    # has cores): their memory (4000 MB each) and one curate_shard runtime (60 min) per layer of them
    slots = 0
    for record in squeue(list(jobs)).values():
        cpus, mem, minutes = int(record["cpus"]), int(record["mem"].rstrip("M")), minutes_of(record["time"])
        assert mem == 4000 * min(cpus, 4) <= 16000 and minutes % 60 == 0, record
        slots += min(cpus, 4) * minutes // 60
    assert slots >= FILES
    ran = re.findall(r"python -m workflow curate_shard --source prose --part (\d+)", log)
    assert sorted(set(ran)) == [f"{i:05d}" for i in range(FILES)], log
    for i in range(FILES):
        stats = json.loads((repo / paths.curate_shard_dir("prose", f"{i:05d}") / "stats.json").read_text())
        assert [e["url"] for e in stats["inputs"]] == [f"raw/{i:03d}.jsonl"]
