"""Default-study wall time: `make study` (that is, `make run` minus its install step) on a fresh copy of the repo.

    .venv/bin/python bench/make_run.py [--params PATH] [--cores all] [--skip] [--json PATH]

`make run` is `make install` (pip into .venv) followed by `make study`. Installing from a copy would
re-point the shared venv at that copy, so this times `make study VENV=<this interpreter's venv>
CORES=<cores>` in a fresh copy of the working tree: git and DVC project, no artifacts, empty DVC
cache. It reports the wall time, the number of Snakemake jobs, and the sum of their run times from
`benchmarks/*/*.tsv` (what one core running them back to back would take, without Snakemake's and DVC's
own time), with the slowest rules. It takes about 7 minutes on 2 cores; `--skip` records it as skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import csv  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

from bench.common import Row, add_json_option, copy_repo, write_result  # noqa: E402

FIGURE = "default study wall time (`make run` minus install)"


def job_seconds(workspace: Path) -> Counter:
    """Summed run seconds per rule from Snakemake's `benchmark:` files."""
    per_rule: Counter = Counter()
    for tsv in workspace.glob("benchmarks/*/*.tsv"):
        with open(tsv) as f:
            for rec in csv.DictReader(f, delimiter="\t"):
                per_rule[tsv.parent.name] += float(rec["s"])
    return per_rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the study (default: params.yaml)")
    parser.add_argument("--cores", default="all", help="`make study CORES=...` (default all)")
    parser.add_argument("--skip", action="store_true", help="do not run; record the figure as skipped")
    add_json_option(parser)
    args = parser.parse_args()
    if args.skip:
        print("make_run: skipped (--skip)")
        write_result(args.json, "make_run", [], skipped="--skip (a full run of the default study takes ~7 min)")
        return

    with tempfile.TemporaryDirectory(prefix="arbor-bench-make-") as tmp:
        work = copy_repo(Path(tmp) / "repo", args.params.read_text())
        log = Path(tmp) / "make.log"
        cmd = ["make", "study", f"VENV={sys.prefix}", f"CORES={args.cores}"]
        print(f"{' '.join(cmd)} in a fresh copy of the repo with {args.params}; load {os.getloadavg()[0]:.1f}", flush=True)
        start = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.run(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"make study exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        per_rule = job_seconds(work)
        jobs = sum(1 for _ in work.glob("benchmarks/*/*.tsv"))
    serial = sum(per_rule.values())
    slowest = ", ".join(f"{rule} {s:.0f} s" for rule, s in per_rule.most_common(3))
    print(f"make study: {wall:.0f}s wall, {jobs} jobs whose run times sum to {serial:.0f}s ({slowest}); "
          f"load {os.getloadavg()[0]:.1f}")
    figure = FIGURE if args.params.resolve() == ROOT / "params.yaml" else f"`make study` wall time ({args.params})"
    write_result(args.json, "make_run", [Row(
        figure, wall, "s", "sum of the job run times", serial, wall / serial,
        note=f"`make study CORES={args.cores}` on a fresh copy (no pip install: it would re-point the shared venv); "
             f"{jobs} jobs; slowest rules: {slowest}")])


if __name__ == "__main__":
    main()
