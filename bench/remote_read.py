"""Remote read throughput: sources read from S3 (moto's server) and over HTTP (aiohttp's file server) on
127.0.0.1 against the local read of the same files, side by side in one run.

    .venv/bin/python bench/remote_read.py [--mb 64] [--file-mb 16] [--repeats 3]

The corpus: files of --file-mb MB of jsonl.zst (the sample files' zstd frames concatenated) until it
holds --mb MB, and the same documents as one parquet file per jsonl.zst file. Each repeat reads every file from each place, in rotating order:
  documents  `workflow.curate.readers.Reader` (ranged reads, decompress, parse, validate): what
             curate_shard does before its filters
  bytes      the raw bytes only (`readers.open_input`, 1 MiB reads): the transport alone
Reports MB/s of stored bytes (median over repeats) and the ratio remote / local. Both servers are Python
processes on the same cores as the reader, so the remote figures include the server's CPU: they show
arbor's overhead on a fast network, not what a real bucket across a WAN gives.
"""

from __future__ import annotations

import argparse
import glob
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

SAMPLE = sorted(glob.glob(str(ROOT / "data/sample/*/*.jsonl.zst")))
BUCKET = "bench"


def corpus(work: Path, mb: float, file_mb: float) -> list[Path]:
    """Files of about `file_mb` MB of jsonl.zst (the sample files' zstd frames concatenated, in turn) and a
    parquet twin of each, under `work`, until they hold `mb` MB; their paths relative to `work`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workflow.io import read_jsonl

    frames = [(Path(src).read_bytes(), list(read_jsonl(src))) for src in SAMPLE]
    files, total, k, i = [], 0, 0, 0
    while total < mb * 1e6:
        rel, twin = Path(f"jsonl/{k:03d}.jsonl.zst"), Path(f"parquet/{k:03d}.parquet")
        for d in (work / rel.parent, work / twin.parent):
            d.mkdir(parents=True, exist_ok=True)
        docs = []
        with open(work / rel, "wb") as f:
            while f.tell() < file_mb * 1e6:
                data, records = frames[i % len(frames)]
                f.write(data)
                docs += records
                i += 1
        pq.write_table(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}), work / twin,
                       compression="zstd", row_group_size=1000)
        files += [rel, twin]
        total += (work / rel).stat().st_size
        k += 1
    return files


def read_documents(paths: list[str]) -> int:
    from workflow.curate.readers import InvalidLog, Reader, input_entry

    reader = Reader("bench", "text", "id", 1 << 30, InvalidLog("bench"))
    return sum(1 for p in paths for _ in reader.read(p, input_entry(p)))


def read_bytes(paths: list[str]) -> int:
    from workflow.curate.readers import input_entry, open_input

    total = 0
    for p in paths:
        with open_input(p, input_entry(p) if "://" in p else None) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="MB of jsonl.zst in the corpus (plus its parquet twin)")
    ap.add_argument("--file-mb", type=float, default=16, help="MB per jsonl.zst file")
    ap.add_argument("--repeats", type=int, default=3)
    add_json_option(ap)
    args = ap.parse_args()
    import os

    from tests.servers import HttpServer, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        files = corpus(work / "www", args.mb, args.file_mb)
        sizes = {kind: sum((work / "www" / f).stat().st_size for f in files if f.parts[0] == kind) for kind in ("jsonl", "parquet")}
        with S3Server(work / "moto.log") as s3, HttpServer(work / "www", work / "http.log") as web:
            os.environ.update(s3.env)
            client = s3.client()
            client.create_bucket(Bucket=BUCKET)
            for f in files:
                client.upload_file(str(work / "www" / f), BUCKET, f.as_posix())
            places = {"local": str(work / "www"), "s3": f"s3://{BUCKET}", "http": web.url}
            print(f"corpus: {sizes['jsonl'] / 1e6:.1f} MB jsonl.zst in {len(files) // 2} files, {sizes['parquet'] / 1e6:.1f} MB "
                  f"as parquet; servers on 127.0.0.1; {args.repeats} repeats", flush=True)
            tasks = {(kind, how): None for kind in ("jsonl", "parquet") for how in ("documents", "bytes")}
            runs = {(place, kind, how): [] for place in places for kind, how in tasks}
            docs: dict = {}
            read_documents([f"{places['s3']}/{files[0].as_posix()}"])  # imports and first connections outside the timings
            for r in range(args.repeats):
                order = list(places)[r % 3:] + list(places)[:r % 3]
                for kind, how in tasks:
                    for place in order:
                        paths = [f"{places[place]}/{f.as_posix()}" for f in files if f.parts[0] == kind]
                        start = time.perf_counter()
                        n = (read_documents if how == "documents" else read_bytes)(paths)
                        runs[place, kind, how].append(time.perf_counter() - start)
                        docs[place, kind, how] = n
                print(f"  repeat {r}: " + ", ".join(f"{p}/{k}/{h} {runs[p, k, h][-1]:.2f} s" for p, k, h in runs), flush=True)
        for (place, kind, how), n in docs.items():
            assert n == docs["local", kind, how], f"{place} read {n} {how} of {kind}, local {docs['local', kind, how]}"
        rows = []
        print(f"\n{'read':<22}{'local MB/s':>12}{'S3 MB/s':>10}{'S3/local':>10}{'HTTP MB/s':>11}{'HTTP/local':>12}")
        for kind, how in tasks:
            rate = {p: sizes[kind] / 1e6 / statistics.median(runs[p, kind, how]) for p in places}
            print(f"{kind + ' ' + how:<22}{rate['local']:>12.1f}{rate['s3']:>10.1f}{rate['s3'] / rate['local']:>9.2f}x"
                  f"{rate['http']:>11.1f}{rate['http'] / rate['local']:>11.2f}x")
            for place, server in (("s3", "S3 (moto_server)"), ("http", "HTTP (aiohttp static)")):
                rows.append(Row(f"remote read, {kind} {how} from {server} on 127.0.0.1", round(rate[place], 1), "MB/s",
                                "the same files on local disk", round(rate["local"], 1), round(rate[place] / rate["local"], 3),
                                note=f"{sizes[kind] / 1e6:.0f} MB stored; {docs['local', kind, 'documents']:,} docs"
                                if how == "documents" else f"{sizes[kind] / 1e6:.0f} MB stored, transport only"))
        write_result(args.json, "remote_read", rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
