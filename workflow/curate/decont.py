"""n-gram decontamination: a training document sharing any word n-gram with an evaluation text is dropped.

Evaluation texts are the held-out splits of every source and `eval.decontaminate_files`. Words are
the lower-cased `\\w+` runs (punctuation and case never hide a match); n defaults to 13 (GPT-3).
The index holds one 64-bit hash per distinct evaluation n-gram: its size follows the evaluation
data, not the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import xxhash

from workflow.curate.dedup import WORD


def ngram_hashes(text: str, n: int) -> Iterator[int]:
    words = WORD.findall(text.lower())
    for i in range(len(words) - n + 1):
        yield xxhash.xxh3_64_intdigest(" ".join(words[i:i + n]).encode())


class NGramIndex:
    def __init__(self, n: int):
        self.n = n
        self.hashes: set[int] = set()

    def add(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.hashes.update(ngram_hashes(text, self.n))

    def contaminated(self, text: str) -> bool:
        return bool(self.hashes) and not self.hashes.isdisjoint(ngram_hashes(text, self.n))


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def eval_file_texts(path: str) -> Iterator[str]:
    """Every string of an evaluation task file: jsonl[.gz|.zst] records and parquet rows (all string
    fields, nested ones included); any other file is one plain-text passage."""
    name = path.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield from _strings(row)
    elif any(name.endswith(ext) for ext in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json")):
        from workflow.curate.readers import _json_lines

        lines, raw = _json_lines(path)
        with raw:
            for line in lines:
                if line.strip():
                    yield from _strings(json.loads(line))
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()
