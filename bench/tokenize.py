"""Tokenization throughput: arbor's `tokenize` against Megatron-LM's preprocessing and the raw ceiling.

    .venv/bin/python bench/tokenize.py [--corpus-mb 60] [--workers 2] [--repeats 3]

On one corpus, one tokenizer and `--workers` processes, each repeat runs, each in a fresh
interpreter (imports and corpus loading are not timed; pool start-up is):

  (a) arbor: `workflow.tokenize` (zstd shards -> worker processes -> streamed .bin/.idx);
  (b) Megatron-LM `tools/preprocess_data.py`: a `multiprocessing.Pool` maps a per-document
      `encode` over the jsonl lines (`imap`, chunksize 32) while the parent adds each document
      to megatron-core's `IndexedDatasetBuilder` and finalizes the `.idx`;
  (c) the ceiling: `Tokenizer.encode_batch_fast` over the same texts already in memory (no I/O,
      no ids extracted), tokenizers' own thread pool on all CPUs.

and prints tokens/s (tokens include the EOD of each document) with the medians and the ratios
(a)/(b) (target >= 1.5) and (a)/(c) (target >= 0.8). (a) and (b) must write identical `.bin`
bytes and (c) the same token count, or the benchmark fails.

The corpus repeats the texts of the curated training shards (`artifacts/curated/*/part-*`) or,
when they are missing, of the embedded raw sample (`data/sample/*/*.jsonl.zst`) until it holds
`--corpus-mb` of text, written as curated shards (2,000 documents each) in a temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the stdlib's `tokenize` (which linecache, inspect and torch import): take
# its folder off the import path before anything imports it by that name, then put the repo on it.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import Row, add_json_option, write_result  # noqa: E402

EOD_TOKEN = "<|endoftext|>"


# -- the three contenders (each runs in its own interpreter) -------------------------------------

def run_arbor(files: list[str], tok_file: str, workers: int, out: str) -> dict:
    import numpy as np
    from tokenizers import Tokenizer

    from workflow import tokenize

    tok = Tokenizer.from_file(tok_file)
    eod = tok.token_to_id(EOD_TOKEN)
    dtype = tokenize.token_dtype(tok.get_vocab_size(with_added_tokens=True))
    t0 = time.perf_counter()
    with tokenize.Encoder(tok_file, eod, dtype, workers) as encoder:
        counts = tokenize.write_split(encoder, dtype, files, out)
    dt = time.perf_counter() - t0
    os.replace(tokenize._tmp(out + ".bin"), out + ".bin")
    os.replace(tokenize._tmp(out + ".idx"), out + ".idx")
    return {"seconds": dt, "tokens": counts["tokens"], "documents": counts["documents"], "dtype": np.dtype(dtype).name}


class MegatronEncoder:
    """`tools/preprocess_data.py`'s Encoder, reduced to one json key and no sentence splitting."""

    tok_file: str = ""
    eod: int = 0

    def initializer(self) -> None:
        from tokenizers import Tokenizer

        MegatronEncoder.tokenizer = Tokenizer.from_file(MegatronEncoder.tok_file)

    def encode(self, json_line: str):
        data = json.loads(json_line)
        ids = MegatronEncoder.tokenizer.encode(data["text"], add_special_tokens=False).ids
        ids.append(MegatronEncoder.eod)
        return {"text": ids}, {"text": [len(ids)]}, len(json_line)


def _jsonl_lines(files: list[str]):
    import zstandard

    for path in files:
        with open(path, "rb") as raw:
            yield from io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), encoding="utf-8")


def run_megatron(files: list[str], tok_file: str, workers: int, out: str) -> dict:
    import multiprocessing

    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tok_file)
    MegatronEncoder.tok_file, MegatronEncoder.eod = tok_file, tok.token_to_id(EOD_TOKEN)
    dtype = np.uint16 if tok.get_vocab_size(with_added_tokens=True) < 65_500 else np.int32
    t0 = time.perf_counter()
    encoder = MegatronEncoder()
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=encoder.initializer)  # Linux default
    encoded_docs = pool.imap(encoder.encode, _jsonl_lines(files), 32)
    builder = IndexedDatasetBuilder(out + ".bin", dtype=dtype)
    docs = tokens = 0
    for doc, sentence_lens, _bytes in encoded_docs:
        builder.add_document(doc["text"], sentence_lens["text"])
        docs += 1
        tokens += sentence_lens["text"][0]
    builder.finalize(out + ".idx")
    pool.close()
    pool.join()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": tokens, "documents": docs}


def run_ceiling(files: list[str], tok_file: str, workers: int, out: str, batch_bytes: int = 8 << 20) -> dict:
    from tokenizers import Tokenizer

    from workflow import tokenize

    texts = [json.loads(line)["text"] for line in _jsonl_lines(files)]
    batches, batch, size = [], [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_bytes:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    tok = tokenize.prepare(Tokenizer.from_file(tok_file))  # the settings (a) encodes with
    tokens = 0
    t0 = time.perf_counter()
    for batch in batches:
        encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
        tokens += sum(map(len, encodings))
        del encodings
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": tokens + len(texts), "documents": len(texts)}


CONTENDERS = {"arbor": run_arbor, "megatron": run_megatron, "ceiling": run_ceiling}
LABELS = {"arbor": "(a) arbor tokenize", "megatron": "(b) Megatron-LM preprocess_data approach",
          "ceiling": "(c) ceiling: encode_batch_fast in memory"}


# -- the corpus ------------------------------------------------------------------------------------

def source_texts(kind: str) -> tuple[list[str], str]:
    done = [p.parent for p in sorted((ROOT / "artifacts/curated").glob("*/stats.json"))]  # finished curations
    if kind == "curated" or (kind == "auto" and done):
        files = [str(p) for d in done for p in sorted(d.glob("part-*.jsonl.zst"))]
        name = f"curated training shards of {', '.join(d.name for d in done)} (artifacts/curated/*/part-*)"
    else:
        files = sorted(glob.glob(str(ROOT / "data/sample/*/*.jsonl.zst")))
        name = "embedded raw sample (data/sample/*/*.jsonl.zst)"
    if not files:
        sys.exit(f"no corpus for --corpus {kind}: run `python -m workflow curate --source NAME` or use --corpus sample")
    return [json.loads(line)["text"] for line in _jsonl_lines(files)], name


def build_corpus(texts: list[str], target_mb: float, out_dir: Path, shard_docs: int = 2000) -> tuple[list[str], int, int]:
    from workflow.io import write_jsonl_zst

    sizes = [len(t.encode("utf-8")) for t in texts]
    repeats = max(1, -(-int(target_mb * 1e6) // sum(sizes)))
    records = ({"id": f"r{r}-{i}", "domain": "bench", "text": t, "meta": {}}
               for r in range(repeats) for i, t in enumerate(texts))
    files = []
    for k in itertools.count():
        shard = list(itertools.islice(records, shard_docs))
        if not shard:
            break
        files.append(str(out_dir / f"part-{k:05d}.jsonl.zst"))
        write_jsonl_zst(files[-1], shard, level=3)
    return files, len(texts) * repeats, sum(sizes) * repeats


def tokenizer_file(explicit: str | None, texts: list[str], out_dir: Path) -> tuple[str, str]:
    if explicit:
        return explicit, explicit
    study = ROOT / "artifacts/tokenizer/tokenizer.json"
    if study.is_file():
        path = out_dir / "tokenizer.json"  # a copy: the study's file may be rewritten while we run
        path.write_bytes(study.read_bytes())
        return str(path), "the study tokenizer (artifacts/tokenizer/tokenizer.json)"
    from workflow.tokenizer import train_bpe

    def sample():
        left = 20_000_000
        for t in texts:
            if left <= 0:
                return
            left -= len(t)
            yield t

    tok = train_bpe(sample(), 4096, 2, EOD_TOKEN)
    path = out_dir / "tokenizer.json"
    tok.save(str(path))
    return str(path), "a byte-level BPE (vocab 4096) trained on the first 20 MB of the corpus"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus-mb", type=float, default=60.0, help="text to tokenize, in MB (default 60)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for (a) and (b) (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (a), (b), (c); medians are reported")
    ap.add_argument("--corpus", choices=["auto", "curated", "sample"], default="auto",
                    help="texts to repeat: curated training shards, the raw embedded sample, or curated when present")
    ap.add_argument("--tokenizer", help="a tokenizer.json with the EOD token (default: the study's, else trained)")
    add_json_option(ap)
    ap.add_argument("--run", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--tok", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:  # one timed run in this fresh interpreter
        result = CONTENDERS[args.run](json.loads(args.files), args.tok, args.workers, args.out)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="arbor-bench-tokenize-") as tmp:
        tmp_dir = Path(tmp)
        texts, corpus_name = source_texts(args.corpus)
        files, n_docs, n_bytes = build_corpus(texts, args.corpus_mb, tmp_dir)
        tok_file, tok_name = tokenizer_file(args.tokenizer, texts, tmp_dir)
        del texts
        print(f"corpus: {n_bytes / 1e6:.1f} MB of text, {n_docs:,} documents in {len(files)} zstd shards, "
              f"repeating the {corpus_name}")
        print(f"tokenizer: {tok_name}; workers: {args.workers}; repeats: {args.repeats}; "
              f"CPUs: {len(os.sched_getaffinity(0))}")
        rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        loads = [os.getloadavg()[0]]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        for r in range(args.repeats):
            outputs = {}
            for name in CONTENDERS:
                out = str(tmp_dir / f"{name}-{r}")
                proc = subprocess.run([sys.executable, __file__, "--run", name, "--files", json.dumps(files),
                                       "--tok", tok_file, "--workers", str(args.workers), "--out", out],
                                      capture_output=True, text=True, env=env, cwd=ROOT)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                res = json.loads(lines[-1][len("RESULT "):])
                rates[name].append(res["tokens"] / res["seconds"])
                outputs[name] = (res, out)
                loads.append(os.getloadavg()[0])
                print(f"  round {r + 1}: {name:<8} {res['tokens']:>12,} tokens in {res['seconds']:6.2f}s "
                      f"= {rates[name][-1]:>12,.0f} tok/s", flush=True)
            (a, a_out), (b, b_out), (c, _) = outputs["arbor"], outputs["megatron"], outputs["ceiling"]
            if not (a["tokens"] == b["tokens"] == c["tokens"] and a["documents"] == b["documents"] == n_docs):
                sys.exit(f"token/document counts differ: arbor {a}, megatron {b}, ceiling {c}")
            for ext in (".bin", ".idx"):
                if sha256(a_out + ext) != sha256(b_out + ext):
                    sys.exit(f"arbor and Megatron-LM wrote different {ext} files")
                os.unlink(a_out + ext)
                os.unlink(b_out + ext)
        med = {name: statistics.median(v) for name, v in rates.items()}
        print()
        for name in CONTENDERS:
            print(f"{LABELS[name]:<44} {med[name]:>12,.0f} tok/s  (median of "
                  + ", ".join(f"{v:,.0f}" for v in rates[name]) + ")")
        ab, ac = med["arbor"] / med["megatron"], med["arbor"] / med["ceiling"]
        # per-round ratios: the three runs of a round are minutes apart, so they share the machine's load
        per_round = [(a / b, a / c) for a, b, c in zip(rates["arbor"], rates["megatron"], rates["ceiling"])]
        print("per-round (a)/(b), (a)/(c): " + "; ".join(f"{x:.2f}, {y:.2f}" for x, y in per_round))
        print(f"(a)/(b) = {ab:.2f}  (target >= 1.5: {'met' if ab >= 1.5 else 'NOT met'})")
        print(f"(a)/(c) = {ac:.2f}  (target >= 0.8: {'met' if ac >= 0.8 else 'NOT met'})")
        print(f"outputs: (a) and (b) .bin/.idx byte-identical, same token count as (c); "
              f"1-min load average during the run: {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs")
        size = f"{n_bytes / 1e6:.0f} MB, {args.workers} workers"
        write_result(args.json, "tokenize", [
            Row(f"tokenize ({size})", med["arbor"], "tok/s", "Megatron-LM preprocess_data approach", med["megatron"], ab,
                ">= 1.5", note="byte-identical .bin/.idx"),
            Row(f"tokenize vs raw encoder ({size})", med["arbor"], "tok/s", "encode_batch_fast in memory", med["ceiling"], ac,
                ">= 0.8")])


if __name__ == "__main__":
    main()
