"""Intra-op threads on a shared machine: a trunk segment at every core's thread against one thread, alone and
beside busy processes (what `make test` does: pytest-xdist runs one worker per core, each starting jobs).

    .venv/bin/python bench/threads.py [--steps 60] [--busy N] [--repeats 2]

In one throwaway study (bench/train.py's synthetic corpus and model flags), each repeat runs
`python -m workflow trunk` from scratch four ways: ARBOR_THREADS = all cores or 1, with the machine otherwise
idle or with `--busy` processes spinning (default: half the cores, one pytest-xdist worker's share).
It prints tokens/s per wall second and per CPU second of the job (its process tree), and the ratio
one thread / all threads in each condition. OpenMP threads that outnumber the free cores spin at every
barrier, so beside busy processes all threads are slower per wall second and burn CPU the other jobs need.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import Row, add_json_option, write_result  # noqa: E402
from bench.train import study_raw, write_corpus  # noqa: E402


def spin() -> None:
    while True:
        pass


def run_segment(workdir: Path, threads: int, steps: int) -> tuple[float, float]:
    """(wall s, CPU s of the job's process tree) of `python -m workflow trunk` from scratch at `threads`."""
    shutil.rmtree(workdir / "artifacts" / "trunk", ignore_errors=True)
    env = {**os.environ, "ARBOR_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "SLURM_CONF": "/dev/null",
           "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workflow", "trunk", "--trunk", "main", "--step", str(steps)],
                   cwd=workdir, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=max(1, cores // 2), help="spinning processes beside the job")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    add_json_option(parser)
    args = parser.parse_args()
    args.save_interval = args.steps  # no intermediate save: the figure is the training loop
    if cores < 2:
        print("bench/threads.py: one core, nothing to compare")
        write_result(args.json, "threads", [], skipped="one core")
        return

    import yaml

    tokens = args.steps * args.global_batch * args.seq
    with tempfile.TemporaryDirectory(prefix="arbor-threads-") as tmp:
        workdir = Path(tmp)
        write_corpus(workdir, args.vocab, tokens + 200_000)
        (workdir / "params.yaml").write_text(yaml.safe_dump(study_raw(args), sort_keys=False))
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for busy in (0, args.busy):
            spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
            for p in spinners:
                p.start()
            try:
                for r in range(args.repeats):
                    for threads in ((cores, 1) if r % 2 == 0 else (1, cores)):
                        label = "idle" if busy == 0 else f"{busy} busy"
                        results.setdefault((label, threads), []).append(run_segment(workdir, threads, args.steps))
            finally:
                for p in spinners:
                    p.terminate()
    rows = []
    print(f"trunk segment of {args.steps} steps ({tokens:,} tokens), {cores} cores, {args.repeats} repeats (medians)")
    print(f"{'machine':>10} {'threads':>8} {'tokens/s':>10} {'tokens/CPU s':>13}")
    for label in dict.fromkeys(k[0] for k in results):
        figures = {}
        for threads in (cores, 1):
            runs = results[(label, threads)]
            per_wall = statistics.median(tokens / w for w, _ in runs)
            per_cpu = statistics.median(tokens / c for _, c in runs)
            figures[threads] = (per_wall, per_cpu)
            print(f"{label:>10} {threads:>8} {per_wall:>10,.0f} {per_cpu:>13,.0f}")
        (one_wall, one_cpu), (all_wall, all_cpu) = figures[1], figures[cores]
        print(f"{label:>10} one thread / {cores} threads: {one_wall / all_wall:.2f}x per wall s, "
              f"{one_cpu / all_cpu:.2f}x per CPU s")
        rows.append(Row(f"trunk tokens/s, 1 thread, machine {label}", one_wall, "tokens/s",
                        f"{cores} threads", all_wall, one_wall / all_wall))
        rows.append(Row(f"trunk tokens per CPU s, 1 thread, machine {label}", one_cpu, "tokens/CPU s",
                        f"{cores} threads", all_cpu, one_cpu / all_cpu))
    write_result(args.json, "threads", rows)


if __name__ == "__main__":
    main()
