"""No-op DAG checks: `snakemake -n` and `dvc status` on an up-to-date study with 50 and 200 decay branches vs the
default study.

    .venv/bin/python bench/dag_noop.py [--branches 50 200] [--repeats 3] [--json PATH]

Studies, each in a fresh copy of the repository: the default params.yaml (its few decay branches) and the
same with generated branches added up to each `--branches` count (`bench-NN`, starting from the trunk
checkpoints in turn, fraction 0.1, linear or cosine), then `python -m workflow dvc-yaml`.
Each workspace is brought up to date without training: every output the dry run lists is
created as a small placeholder (a directory holds one file). Then, as `make study` does,
`snakemake --touch` orders their mtimes, `dvc commit --force` records them in dvc.lock and a second
`--touch` re-stamps them. Both tools then have nothing to do (checked). After one untimed warm-up,
it times `snakemake -n --profile profiles/local` and `dvc status` (median of `--repeats`,
wall and CPU seconds) and prints the ratio of the branched study to the default one and the cost per
extra branch. Placeholders are small files, not checkpoints, so the figures are DAG building and
up-to-date checks without re-hashing large outputs (DVC's state database skips unchanged files anyway).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from bench.common import Row, add_json_option, copy_repo, run, write_result  # noqa: E402

SNAKEMAKE_N = ["snakemake", "-n", "--profile", "profiles/local"]
DVC_STATUS = ["dvc", "status"]
TOUCH = ["snakemake", "--profile", "profiles/local", "--touch", "--quiet", "all"]


def branched(raw: dict, branches: int) -> dict:
    """`raw` with generated decay branches added until it has `branches` (from each trunk checkpoint in turn)."""
    raw = {**raw, "decays": dict(raw.get("decays") or {})}
    steps = raw["trunk"]["checkpoints"]
    for i in range(branches - len(raw["decays"])):
        raw["decays"][f"bench-{i:03d}"] = {"from": f"main@{steps[i % len(steps)]}", "fraction": 0.1,
                                           "shape": ("linear", "cosine")[i % 2]}
    return raw


def dry_run_outputs(text: str) -> list[str]:
    """The outputs of every job a `snakemake -n` printout lists."""
    prefix = "    output: "
    return [o for line in text.splitlines() if line.startswith(prefix) for o in line[len(prefix):].split(", ")]


def up_to_date_workspace(dest: Path, raw: dict, before_planning=None) -> int:
    """A copy of the repo with `raw` as its study, every output a placeholder, recorded by Snakemake and
    DVC as `make study` leaves it; returns the number of jobs of a full run. `before_planning(dest)` may
    add files the study reads (its inputs) first."""
    copy_repo(dest, yaml.safe_dump(raw, sort_keys=False))
    if before_planning is not None:
        before_planning(dest)
    run([sys.executable, "-m", "workflow", "dvc-yaml"], dest)
    dry = run(SNAKEMAKE_N, dest).stdout
    outputs = dry_run_outputs(dry)
    for out in outputs:  # directory() outputs are not marked in the printout: here every file output has a suffix
        path = dest / out
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("placeholder\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder").write_text("placeholder\n")
    run(TOUCH, dest)
    run(["dvc", "commit", "--force", "--quiet"], dest)
    run(TOUCH, dest)
    return sum(1 for line in dry.splitlines() if line.startswith(("rule ", "localrule ")))


def timed(cmd: list[str], cwd: Path, expect: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of `cmd`; exits unless its output contains `expect`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = run(cmd, cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if expect not in proc.stdout + proc.stderr:
        sys.exit(f"{' '.join(cmd)}: expected {expect!r} (an up-to-date workspace), got:\n"
                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, nargs="+", default=[50, 200], help="decay branches of the large studies")
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    studies = {"default": base, **{f"{n} branches": branched(base, n) for n in args.branches}}
    n_branches = {k: len(v.get("decays") or {}) for k, v in studies.items()}
    if min(args.branches) <= n_branches["default"]:
        sys.exit(f"--branches {args.branches}: the default study already has {n_branches['default']}")
    checks = {"snakemake -n": (SNAKEMAKE_N, "Nothing to be done"), "dvc status": (DVC_STATUS, "up to date")}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {(s, c): [] for s in studies for c in checks}
    with tempfile.TemporaryDirectory(prefix="arbor-bench-dag-") as tmp:
        dirs = {name: Path(tmp) / name for name in studies}
        for name, raw in studies.items():
            start = time.perf_counter()
            jobs = up_to_date_workspace(dirs[name], raw)
            print(f"{name}: {n_branches[name]} decay branches, {jobs} jobs; up-to-date workspace built in "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            for cmd, expect in checks.values():  # warm-up: page cache, DVC's state database
                timed(cmd, dirs[name], expect)
        for r in range(args.repeats):  # alternate the studies so both see the same machine load
            for name in studies:
                for check, (cmd, expect) in checks.items():
                    runs[name, check].append(timed(cmd, dirs[name], expect))
                    wall, cpu = runs[name, check][-1]
                    print(f"  repeat {r + 1}: {name:<8} {check:<13} {wall:6.2f}s wall, {cpu:6.2f}s CPU; "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    rows = []
    for name in studies:
        if name == "default":
            continue
        extra = n_branches[name] - n_branches["default"]
        for cmd in checks:
            (bw, bc), (dw, dc) = med[name, cmd], med["default", cmd]
            per_branch = (bw - dw) / extra
            print(f"no-op {cmd}: median {bw:.2f}s wall with {n_branches[name]} branches, {dw:.2f}s with "
                  f"{n_branches['default']}: {bw / dw:.2f}x wall, {bc / dc:.2f}x CPU; "
                  f"{1000 * per_branch:+.0f} ms wall per extra branch")
            rows.append(Row(f"no-op `{cmd}`, {n_branches[name]} decay branches", bw, "s",
                            f"default study ({n_branches['default']} branches)", dw, bw / dw,
                            note=f"target <= 3 s: {'met' if bw <= 3 else 'missed'}; {1000 * per_branch:+.0f} ms per "
                                 f"extra branch; CPU {bc:.2f} s vs {dc:.2f} s; up-to-date workspace of placeholders"))
    write_result(args.json, "dag_noop", rows)


if __name__ == "__main__":
    main()
