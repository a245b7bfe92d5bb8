"""`make bench`: every script in bench/, each in its own process, then one table of figures against their baselines.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...] [--out PATH] [--markdown]
    .venv/bin/python bench/run_all.py --from bench/results.json --markdown   # re-print a past run

Each script prints its own output as it runs and writes its rows with `--json` (bench/common.py).
The default sizes keep the whole run near 25 minutes on 2 cores. `--quick` uses minimal sizes and
skips `make_run`: it checks that everything runs, and its figures mean nothing. The results (rows, the
machine, each script's time) go to `--out`, by default bench/results.json (bench/results-quick.json with
`--quick`); `--markdown` also prints the table as Markdown for the README's Performance section. A
script that fails shows up as FAILED in the table and makes the exit status 1; a missed target does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

# script -> (arguments of `make bench`, arguments of `make bench-quick`), in table order
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "curate": (["--repeats", "3", "--limit", "2000"], ["--repeats", "1", "--limit", "150"]),
    "remote_read": (["--mb", "64", "--repeats", "3"], ["--mb", "2", "--file-mb", "1", "--repeats", "1"]),
    "score": (["--limit", "4000", "--repeats", "3"], ["--limit", "200", "--repeats", "1"]),
    "tokenize": (["--corpus-mb", "30", "--repeats", "3"], ["--corpus-mb", "1", "--repeats", "1"]),
    "evaluate": (["--requests", "1200", "--repeats", "3"], ["--requests", "40", "--repeats", "1"]),
    "job_startup": (["--repeats", "3"], ["--repeats", "1"]),
    "train": (["--steps", "50", "--repeats", "3"],
              ["--steps", "4", "--repeats", "1", "--hidden", "64", "--layers", "2", "--save-interval", "2"]),
    "threads": (["--steps", "60", "--repeats", "2"], ["--steps", "4", "--repeats", "1", "--hidden", "64"]),
    "merge": (["--repeats", "3"], ["--hidden", "128", "--layers", "2", "--repeats", "1"]),
    "dag_noop": (["--branches", "50", "200", "--repeats", "3"], ["--branches", "6", "--repeats", "1"]),
    "plan_scale": (["--files", "1000", "5000", "25000", "--repeats", "3"], ["--files", "60", "--branches", "4"]),
    "dvc_checkpoints": ([], ["--hidden", "64", "--layers", "2"]),
    "make_run": ([], ["--skip"]),
    "gpu_smoke": ([], ["--steps", "6"]),
    "gpu_acceptance": ([], []),
}


def machine() -> dict:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        gpu = ", ".join(proc.stdout.split("\n")[:-1]) if proc.returncode == 0 and proc.stdout.strip() else gpu
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem_kb / 2**20), "gpu": gpu,
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}


def describe(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['gpu']}; Python {m['python']}, {m['os']}"


def run_script(name: str, args: list[str]) -> dict:
    """Run bench/<name>.py with `args` in its own process (its output goes to ours); its result entry."""
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args]
    print(f"\n== bench/{name}.py {' '.join(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="arbor-bench-") as tmp:
        out = Path(tmp) / "result.json"
        start = time.perf_counter()
        proc = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT)
        seconds = time.perf_counter() - start
        result = json.loads(out.read_text()) if proc.returncode == 0 and out.is_file() else \
            {"script": name, "skipped": None, "rows": [], "failed": f"exit {proc.returncode}" if proc.returncode else "no result"}
    print(f"== bench/{name}.py: {seconds:.0f}s", flush=True)
    return {"failed": None, **result, "args": args, "seconds": seconds}


# -- the table -----------------------------------------------------------------------------------

def number(x: float | None) -> str:
    """A figure with 3-4 significant digits and thousands separators."""
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 1 else f"{x:.3f}"


def cells(script: dict) -> list[dict[str, str]]:
    """One dict of formatted cells per row of a script's result; a skipped or failed script gives one row."""
    name = script["script"]
    if script.get("failed") or script.get("skipped"):
        status, why = ("FAILED", script["failed"]) if script.get("failed") else ("skipped", script["skipped"])
        return [{"figure": f"bench/{name}.py", "value": status, "baseline": "", "ratio": "", "target": "", "met": "",
                 "note": why, "script": name}]
    out = []
    for r in script["rows"]:
        base = f"{r['baseline']}: {number(r['baseline_value'])} {r['unit']}" if r["baseline"] else ""
        out.append({"figure": r["figure"], "value": f"{number(r['value'])} {r['unit']}", "baseline": base,
                    "ratio": "" if r["ratio"] is None else f"{r['ratio']:.2f}×", "target": r["target"] or "",
                    "met": {True: "yes", False: "NO", None: ""}[r["met"]], "note": r["note"] or "", "script": name})
    return out


def text_table(results: dict) -> str:
    """The results as aligned plain text: one line per figure, notes underneath."""
    cols = ["figure", "value", "baseline", "ratio", "target", "met"]
    rows = [c for s in results["scripts"] for c in cells(s)]
    width = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}

    def line(r: dict[str, str]) -> str:
        return "  ".join(r[c].ljust(width[c]) if c in ("figure", "baseline") else r[c].rjust(width[c]) for c in cols).rstrip()

    out = [line({c: c for c in cols}), "  ".join("-" * width[c] for c in cols)] + [line(r) for r in rows]
    notes = [f"  {r['figure']}: {r['note']}" for r in rows if r["note"]]
    took = ", ".join(f"{s['script']} {s['seconds'] / 60:.1f}" for s in results["scripts"])
    return "\n".join(out + (["notes:"] + notes if notes else []) +
                     [f"measured on: {describe(results['machine'])}",
                      f"total {results['seconds'] / 60:.1f} min ({took} min); {results['started']}"])


def markdown_table(results: dict) -> str:
    """The results as a Markdown table for the README, with the machine and the command under it."""
    out = ["| what | figure | baseline | ratio (target) | notes | script |", "| --- | --- | --- | --- | --- | --- |"]
    for s in results["scripts"]:
        for c in cells(s):
            ratio = c["ratio"] + (f" (target {c['target']}: {'met' if c['met'] == 'yes' else 'NOT met'})" if c["target"] else "")
            out.append(f"| {c['figure']} | {c['value']} | {c['baseline']} | {ratio} | {c['note']} | `bench/{c['script']}.py` |")
    out += ["", f"Measured with `make bench{'-quick' if results.get('quick') else ''}` "
                f"({results['seconds'] / 60:.0f} min, {results['started'][:10]}) on {describe(results['machine'])}."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minimal sizes, make_run skipped: a smoke test")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), metavar="NAME", help="run only these scripts")
    parser.add_argument("--skip", nargs="+", choices=list(SCRIPTS), default=[], metavar="NAME", help="leave these out")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results.json, -quick with --quick)")
    parser.add_argument("--from", dest="source", type=Path, help="print the table of a past run's results; run nothing")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args()

    if args.source:
        results = json.loads(args.source.read_text())
    else:
        names = [n for n in (args.only or SCRIPTS) if n not in args.skip]
        started, start = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
        scripts = [run_script(n, SCRIPTS[n][1 if args.quick else 0]) for n in names]
        results = {"started": started, "seconds": time.perf_counter() - start, "quick": args.quick,
                   "machine": machine(), "scripts": scripts}
        out = args.out or ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
        from workflow.io import write_json

        write_json(out, results)
        print(f"\nwrote {out}")
    print("\n" + text_table(results))
    if args.markdown:
        print("\n" + markdown_table(results))
    if any(s.get("failed") for s in results["scripts"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
