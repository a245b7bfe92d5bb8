"""Planning at corpus scale: the no-op dry run of each engine on an up-to-date study of many input files.

    .venv/bin/python bench/plan_scale.py [--files 1000 5000 25000] [--files-per-job 100] [--branches 200]
                                         [--repeats 1] [--json PATH]

For each file count: a fresh copy of the repository whose study is the default one with its three sources
reading that many small placeholder jsonl files (split evenly, `data/scale/<source>/NNNNN.jsonl`, grouped
into `curate_shard` jobs of `--files-per-job`) and `--branches` decay branches. The workspace is marked up to
date without running anything (bench/dag_noop.py: placeholder outputs, `snakemake --touch`, `dvc commit`),
then `snakemake -n` and `dvc status` are timed (wall seconds, peak RSS of the process from GNU time). Targets
(the planning issue): at most 60 s and 2 GB each at 25,000 files. Building each workspace (one Snakemake
`--touch` and one `dvc commit` over every job) takes longer than what is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from bench.common import Row, add_json_option, run, write_result  # noqa: E402
from bench.dag_noop import branched, up_to_date_workspace  # noqa: E402

SNAKEMAKE_N = ["snakemake", "-n", "--profile", "profiles/local"]
DVC_STATUS = ["dvc", "status"]


def study(raw: dict, files: int, per_job: int, branches: int) -> dict:
    """The default study reading `files` placeholder files over its sources, with `branches` decays."""
    raw = branched(raw, branches)
    for name, source in raw["sources"].items():
        source["paths"] = [f"data/scale/{name}/*.jsonl"]
    raw["curation"] = {**raw.get("curation", {}), "files_per_job": per_job}
    return raw


def write_inputs(repo: Path, sources: list[str], files: int) -> None:
    for i in range(files):
        source = sources[i % len(sources)]
        path = repo / "data/scale" / source / f"{i // len(sources):05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": f"{source}-{i}", "text": f"placeholder document {i} of {source}."}) + "\n")


def timed(cmd: list[str], cwd: Path, expect: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one run of `cmd`, which must report nothing to do."""
    start = time.perf_counter()
    proc = run(["/usr/bin/time", "-f", "PEAK_RSS_KB %M", *cmd], cwd)
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if expect not in out:
        sys.exit(f"{' '.join(cmd)}: expected {expect!r} (an up-to-date workspace), got:\n{out[-3000:]}")
    rss = int(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK_RSS_KB")))
    return wall, rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 5000, 25000])
    parser.add_argument("--files-per-job", type=int, default=100)
    parser.add_argument("--branches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    add_json_option(parser)
    args = parser.parse_args()

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    checks = {"snakemake -n": (SNAKEMAKE_N, "Nothing to be done"), "dvc status": (DVC_STATUS, "up to date")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="arbor-bench-scale-") as tmp:
        for files in args.files:
            raw = study(base, files, args.files_per_job, args.branches)
            repo = Path(tmp) / f"files-{files}"
            start = time.perf_counter()
            jobs = up_to_date_workspace(repo, raw, before_planning=lambda r: write_inputs(r, list(raw["sources"]), files))
            print(f"{files:,} files ({args.files_per_job} per curate_shard job), {args.branches} decay branches: "
                  f"{jobs:,} jobs; up-to-date workspace built in {time.perf_counter() - start:.0f}s", flush=True)
            for name, (cmd, expect) in checks.items():
                timed(cmd, repo, expect)  # warm-up: page cache, DVC's state database
                runs = [timed(cmd, repo, expect) for _ in range(args.repeats)]
                wall, rss = statistics.median(w for w, _ in runs), max(r for _, r in runs)
                print(f"  no-op {name}: {wall:.2f} s wall, peak {rss:,.0f} MB", flush=True)
                rows.append(Row(f"no-op `{name}`, {files:,} input files ({args.files_per_job}/job), "
                                f"{args.branches} branches", wall, "s", target="<= 60",
                                note=f"peak RSS {rss:,.0f} MB (target <= 2048); {jobs:,} jobs"))
    write_result(args.json, "plan_scale", rows)


if __name__ == "__main__":
    main()
