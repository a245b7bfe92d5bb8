"""CPU of one small job, start to end: an evaluate job and a trunk segment, now vs with their old start-up costs.

    .venv/bin/python bench/job_startup.py [--repeats 3]

A throwaway study (git + DVC repository; the unit tests' tiny tokenizer and token files, one held-out split,
main@2 trained, the local tasks' data) runs `python -m workflow evaluate --model main@2` and
`python -m workflow trunk --step 2` (its checkpoint deleted first), one thread each. The baseline runs the same
commands with what the jobs did before: megatron-core imported with its `torch.compile` decorations live
(TorchDynamo and Inductor; `workflow/mcore.py`), lm-eval's environment report (`harness.without_env_report`),
and the curves written through `dvclive.Live` (`checkpoint.write_dvclive`). Both go through the same small
wrapper. CPU seconds are the job's user + system time (its children included), median of `--repeats`.
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
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

from bench.common import Row, add_json_option, write_result  # noqa: E402

WRAPPER = '''
import contextlib, runpy, sys
baseline = sys.argv.pop(1) == "baseline"
if baseline:
    import workflow.mcore
    workflow.mcore.load = lambda: None
    if sys.argv[1] == "evaluate":
        import workflow.evaluate.harness as harness
        harness.without_env_report = contextlib.nullcontext
    if sys.argv[1] == "trunk":
        import workflow.train.checkpoint as ckpt

        def write_dvclive(directory, log):
            from dvclive import Live
            with Live(str(directory), save_dvc_exp=False, dvcyaml=None, report=None) as live:
                for row in log:
                    live.step = row["step"]
                    for name in ckpt.LIVE_METRICS:
                        live.log_metric(name, row[name])

        ckpt.write_dvclive = write_dvclive
sys.argv = ["workflow", *sys.argv[1:]]
runpy.run_module("workflow", run_name="__main__")
'''


def job_cpu(mode: str, argv: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one job (and its children) run through WRAPPER."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", WRAPPER, mode, *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} `{' '.join(argv)}` exited {done.returncode}:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # megatron: "Transformer Engine and Apex are not installed"
    env = {**os.environ, "ARBOR_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(ROOT)}

    import yaml

    from tests.unit.test_evaluate import build_study, study_params
    from workflow import paths

    rows = []
    with tempfile.TemporaryDirectory(prefix="arbor-bench-startup-") as tmp:
        os.chdir(tmp)
        subprocess.run(["git", "init", "-q"], check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
        build_study(Path(tmp))
        Path("params.yaml").write_text(yaml.safe_dump(study_params()))
        subprocess.run(["git", "add", "params.yaml"], check=True)  # a study is a repository with commits
        subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "study"], check=True)
        jobs = {"evaluate job": ["evaluate", "--model", "main@2"], "trunk segment job (2 steps)": ["trunk", "--step", "2"]}
        for label, argv in jobs.items():
            times: dict[str, list[float]] = {"now": [], "baseline": []}
            for _ in range(args.repeats):
                for mode in times:
                    if argv[0] == "trunk":
                        shutil.rmtree(paths.trunk_dir("main", 2))
                    times[mode].append(job_cpu(mode, argv, env))
            new, old = statistics.median(times["now"]), statistics.median(times["baseline"])
            print(f"{label}: {new:5.2f} CPU-s ({', '.join(f'{t:.2f}' for t in times['now'])}); "
                  f"before: {old:5.2f} CPU-s ({', '.join(f'{t:.2f}' for t in times['baseline'])}); {old / new:.2f}x")
            rows.append(Row(f"{label}, tiny study, 1 thread", new, "CPU-s", "before (torch.compile at import, "
                            "lm-eval env report, dvclive.Live)", old, old / new, ">= 1.2",
                            note=f"ratio = before / now; median of {args.repeats}"))
    write_result(args.json, "job_startup", rows)


if __name__ == "__main__":
    main()
