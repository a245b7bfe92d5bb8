"""Curation throughput: arbor's `curate` vs datatrove's `LocalPipelineExecutor` on the same blocks and corpus.

    .venv/bin/python bench/curate.py [--repeats 3] [--limit N] [FILES...]

Three runs per repeat, each on one core over the same jsonl(.zst) files (default: the sample corpus):
  datatrove  LocalPipelineExecutor(tasks=1, workers=1): JsonlReader -> FTFY -> LanguageFilter ->
             GopherRepetition -> GopherQuality -> C4 (FineWeb variant) -> FineWebQuality -> PII -> JsonlWriter
  ours-spacy `workflow.curate.run` with the same blocks (curation.steps defaults, word_tokenizer: spacy):
             all of curate_shard, curate_split and curate (gather); dedup, MinHash, decontamination and
             the held-out split off, so both runs do the same work -> orchestration overhead
  ours-fast  the same with word_tokenizer: fast (the regex word splitter) -> speedup and agreement
Reports docs/s and MB/s per core (wall clock and CPU time, median over repeats), the overhead of
ours-spacy vs datatrove, the speedup of ours-fast vs datatrove, and the share of documents on
which ours-fast and datatrove take the same keep/drop decision. Timings on a shared machine are
noisy: use several repeats and read the CPU-time columns.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like stdlib modules (tokenize.py): import from the repo root, not from here.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from bench.common import Row, add_json_option, write_result  # noqa: E402

DEFAULT_FILES = sorted(glob.glob(str(ROOT / "data/sample/*/*.jsonl.zst")))


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def corpus(files: list[str], limit: int | None, work: Path) -> tuple[list[str], int, int]:
    """Copies (or truncates) the input into `work/input/` as plain jsonl; returns files, docs, text bytes."""
    from workflow.io import read_jsonl

    out_dir = work / "input"
    out_dir.mkdir(parents=True)
    out, docs, nbytes = [], 0, 0
    for i, f in enumerate(files):
        dest = out_dir / f"{i:03d}-{Path(f).name.split('.')[0]}.jsonl"
        with open(dest, "w") as w:
            for rec in read_jsonl(f):
                if limit is not None and docs >= limit:
                    break
                w.write(json.dumps({"id": rec["id"], "text": rec["text"]}, ensure_ascii=False) + "\n")
                docs += 1
                nbytes += len(rec["text"].encode())
        out.append(str(dest))
    return out, docs, nbytes


def datatrove_run(files: list[str], out: Path) -> set[str]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from workflow.curate.blocks import build_steps
    from workflow.params import Curation

    cfg = Curation(word_tokenizer="spacy", normalize=None, min_chars=1)
    blocks = [b for name, b in build_steps(cfg, cfg.steps) if name not in ("normalize", "min_chars")]
    folder = str(Path(files[0]).parent)
    pipeline = [JsonlReader(folder, glob_pattern="*.jsonl"), *blocks, JsonlWriter(str(out / "data"), compression=None)]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(out / "logs")).run()
    return {json.loads(line)["id"] for f in glob.glob(str(out / "data" / "*.jsonl")) for line in open(f)}


def ours_run(files: list[str], out: Path, tokenizer: str) -> set[str]:
    from workflow import curate
    from workflow.io import read_jsonl
    from workflow.params import parse_params

    params = parse_params({
        "sources": {"bench": {"paths": files, "domain": "bench", "id_key": "id"}},
        "curation": {"normalize": None, "min_chars": 1, "word_tokenizer": tokenizer, "exact_dedup": False,
                     "near_dedup": None, "decontamination": None, "heldout_fraction": 0.0},
        "trunk": {"checkpoints": [1]},
    })
    cwd = os.getcwd()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    try:
        curate.run(params, "bench")
        return {r["id"] for p in sorted(glob.glob("artifacts/curated/bench/part-*.jsonl.zst")) for r in read_jsonl(p)}
    finally:
        os.chdir(cwd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=DEFAULT_FILES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    add_json_option(ap)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        files, n_docs, n_bytes = corpus(args.files, args.limit, work)
        print(f"corpus: {n_docs:,} docs, {n_bytes / 1e6:.1f} MB of text in {len(files)} files; 1 core per run; "
              f"{args.repeats} repeats", flush=True)
        runs = {"datatrove": lambda o: datatrove_run(files, o), "ours-spacy": lambda o: ours_run(files, o, "spacy"),
                "ours-fast": lambda o: ours_run(files, o, "fast")}
        warm = work / "warmup"  # imports, spaCy and the LID model load outside the timings
        warm.mkdir()
        warm_files, _, _ = corpus([args.files[0]], 3, warm)
        datatrove_run(warm_files, warm / "dt")
        ours_run(warm_files, warm / "ours", "spacy")
        wall: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        kept: dict[str, set[str]] = {}
        for r in range(args.repeats):
            order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]  # rotate: no run always goes first
            for name in order:
                fn = runs[name]
                out = work / f"{name}-{r}"
                out.mkdir()
                c0, t0 = cpu_seconds(), time.perf_counter()
                kept[name] = fn(out)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(cpu_seconds() - c0)
                shutil.rmtree(out)
                print(f"  repeat {r}: {name:<10} {wall[name][-1]:7.1f} s wall, {cpu[name][-1]:7.1f} s cpu, "
                      f"{len(kept[name]):,} kept", flush=True)
        print(f"\n{'run':<11}{'docs/s (wall)':>15}{'MB/s (wall)':>13}{'docs/s (cpu)':>14}{'MB/s (cpu)':>12}{'kept':>8}")
        med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}
        for name, (w, c) in med.items():
            print(f"{name:<11}{n_docs / w:>15.1f}{n_bytes / 1e6 / w:>13.3f}{n_docs / c:>14.1f}{n_bytes / 1e6 / c:>12.3f}"
                  f"{len(kept[name]):>8,}")
        base = med["datatrove"]
        for label, name in (("orchestration overhead (ours-spacy vs datatrove)", "ours-spacy"),):
            print(f"{label}: {100 * (med[name][0] / base[0] - 1):+.1f}% wall, {100 * (med[name][1] / base[1] - 1):+.1f}% cpu")
        print(f"speedup (ours-fast vs datatrove): {base[0] / med['ours-fast'][0]:.2f}x wall, "
              f"{base[1] / med['ours-fast'][1]:.2f}x cpu")
        for name in ("ours-spacy", "ours-fast"):
            differ = len(kept[name] ^ kept["datatrove"])
            print(f"same keep/drop decision as datatrove ({name}): {100 * (1 - differ / n_docs):.2f}% "
                  f"({differ} of {n_docs:,} documents differ)")
        agree = 100 * (1 - len(kept["ours-fast"] ^ kept["datatrove"]) / n_docs)
        rate = {k: n_docs / c for k, (_, c) in med.items()}  # docs per CPU second: steadier on a shared machine
        dt = "datatrove LocalPipelineExecutor"
        write_result(args.json, "curate", [
            Row("curation, regex word splitter (1 core)", rate["ours-fast"], "docs/CPU-s", dt, rate["datatrove"],
                rate["ours-fast"] / rate["datatrove"], note=f"{base[0] / med['ours-fast'][0]:.2f}x wall; {n_docs:,} docs, {n_bytes / 1e6:.1f} MB"),
            Row("curation, spaCy splitter = datatrove's blocks (orchestration)", rate["ours-spacy"], "docs/CPU-s", dt,
                rate["datatrove"], rate["ours-spacy"] / rate["datatrove"],
                note=f"overhead {100 * (med['ours-spacy'][0] / base[0] - 1):+.1f}% wall"),
            Row("curation, same keep/drop decision as datatrove (regex splitter)", agree, "%", target=">= 99",
                note="workflow/params.py: word_tokenizer fast")])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
