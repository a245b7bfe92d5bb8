"""Scoring throughput: arbor's `score` stage vs datatrove's fastText filter, same documents, same model, one core.

    .venv/bin/python bench/score.py [--limit 4000] [--repeats 3]

The documents are the embedded sample corpus (every source, up to `--limit`), written once as a curated source.
The model is a fastText classifier trained by arbor's `classifier` stage (reference as positives, prose as
negatives). Both sides run in this process, one after the other, `--repeats` times (median):

  arbor      `score`: reads the curated .jsonl.zst shards, scores in batches of 512 (one C++ call each) and
             writes the attribute shards (id -> score)
  datatrove  LocalPipelineExecutor(tasks=1, workers=1): JsonlReader (the same documents, plain jsonl) ->
             FastTextClassifierFilter (one predict per document, scores kept in metadata) and no writer

Throughput is documents per CPU second of this process (per core; both are single-threaded). The scores must
agree (both feed fastText each document's text with newlines as spaces).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from bench.common import Row, add_json_option, write_result  # noqa: E402

LABEL = "__label__hq"


def cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime


def write_sources(limit: int, work: Path) -> int:
    """Curated dirs `reference`, `prose` (classifier examples) and `bench` (every sample document up to `limit`),
    and `input/bench.jsonl` (the same documents for datatrove); returns the number of bench documents."""
    from workflow import paths
    from workflow.curate.common import ShardWriter, write_stats
    from workflow.io import read_jsonl

    def curated(name: str, files: list[str], n: int | None) -> list[dict]:
        writer, docs = ShardWriter(Path(paths.curated_dir(name)), 2000), []
        for f in files:
            for rec in read_jsonl(f):
                if n is not None and len(docs) >= n:
                    break
                docs.append({"id": f"{Path(f).stem}-{len(docs)}", "text": rec["text"]})
                writer.write({**docs[-1], "domain": name, "meta": {}})
        writer.close()
        write_stats(paths.curated_dir(name), {"source": name})
        return docs

    curated("reference", sorted(glob.glob(str(ROOT / "data/sample/reference/*.jsonl.zst"))), 1000)
    curated("prose", sorted(glob.glob(str(ROOT / "data/sample/prose/*.jsonl.zst"))), 1000)
    docs = curated("bench", sorted(glob.glob(str(ROOT / "data/sample/*/*.jsonl.zst"))), limit)
    (work / "input").mkdir()
    with open(work / "input" / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    return len(docs)


def ours(params) -> dict[str, float]:
    from workflow import paths
    from workflow.io import read_jsonl
    from workflow.quality import score

    score.run(params, "q", "bench", inputs={"curated": [paths.curated_dir("bench")], "model": [paths.classifier_dir("q")]})
    return {r["id"]: r["score"] for p in sorted(glob.glob(f"{paths.attributes_dir('q', 'bench')}/*.zst"))
            for r in read_jsonl(p)}


def datatrove(work: Path, model: str) -> dict[str, float]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import FastTextClassifierFilter
    from datatrove.pipeline.readers import JsonlReader

    got: dict[str, float] = {}

    def collect(data, rank: int = 0, world_size: int = 1):
        for doc in data:
            got[doc.id] = doc.metadata[LABEL]
            yield doc

    pipeline = [JsonlReader(str(work / "input"), glob_pattern="*.jsonl"),
                FastTextClassifierFilter(model, keep_labels=("hq", 0.0), newline_replacement=" "), collect]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(work / "dt-logs"),
                          skip_completed=False).run()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4000, help="documents scored")
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()

    from workflow import paths
    from workflow.params import parse_params
    from workflow.quality import classifier

    with tempfile.TemporaryDirectory(prefix="arbor-bench-score-") as tmp:
        work = Path(tmp)
        os.chdir(work)
        n = write_sources(args.limit, work)
        params = parse_params({
            "sources": {s: {"paths": ["unused"], "domain": s} for s in ("reference", "prose", "bench")},
            "trunk": {"checkpoints": [1]},
            "quality": {"scorers": {"q": {"kind": "fasttext", "positives": ["reference"], "negatives": ["prose"],
                                          "max_chars": 10**9}}}})
        classifier.run(params, "q", inputs={"positives": [paths.curated_dir("reference")],
                                            "negatives": [paths.curated_dir("prose")]})
        model = str(Path(paths.classifier_dir("q")) / "model.bin")
        datatrove(work, model)  # warm-up: imports, model load path, page cache
        cpu: dict[str, list[float]] = {"arbor": [], "datatrove": []}
        wall: dict[str, list[float]] = {"arbor": [], "datatrove": []}
        scores = {}
        for _ in range(args.repeats):
            for name, fn in (("arbor", lambda: ours(params)), ("datatrove", lambda: datatrove(work, model))):
                c0, t0 = cpu_seconds(), time.perf_counter()
                scores[name] = fn()
                cpu[name].append(cpu_seconds() - c0)
                wall[name].append(time.perf_counter() - t0)
        rate = {k: n / statistics.median(v) for k, v in cpu.items()}
        rate_wall = {k: n / statistics.median(v) for k, v in wall.items()}
        assert set(scores["arbor"]) == set(scores["datatrove"]), "the two sides scored different documents"
        diff = max(abs(scores["arbor"][k] - scores["datatrove"][k]) for k in scores["arbor"])
        ratio = rate["arbor"] / rate["datatrove"]
        print(f"{n:,} documents, {args.repeats} repeats (median), one core each")
        for k in rate:
            print(f"  {k:9s} {rate[k]:9,.0f} docs/CPU-s  {rate_wall[k]:9,.0f} docs/s wall")
        print(f"ratio arbor/datatrove: {ratio:.2f}x per CPU second, {rate_wall['arbor'] / rate_wall['datatrove']:.2f}x wall; "
              f"largest score difference {diff:.2e}")
        write_result(args.json, "score", [Row(
            f"quality scoring, fastText ({n:,} docs, 1 core)", round(rate["arbor"]), "docs/CPU-s",
            "datatrove FastTextClassifierFilter", round(rate["datatrove"]), ratio, ">= 1.0",
            note=f"{rate_wall['arbor'] / rate_wall['datatrove']:.2f}x wall; arbor also writes the attribute shards; "
                 f"scores agree to {diff:.0e}")])


if __name__ == "__main__":
    main()
