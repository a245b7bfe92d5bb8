"""Tokenize: curated shards -> Megatron .bin/.idx that megatron-core reads back exactly.

The curated shards are written here directly (the curate stage is not needed): the contract is
only `artifacts/curated/<source>/{part-*,heldout/part-*}.jsonl.zst` + `stats.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from workflow import stages
from workflow import paths, tokenize
from workflow.io import read_json, write_json, write_jsonl_zst
from workflow.params import parse_params

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

ROOT = Path(__file__).resolve().parents[2]
EOD = "<|endoftext|>"

TEXTS = [f"Paragraph {i}: the café sells {i * 7} crêpes — “quoted” ✓\n\tindented line {i}\n" * (1 + i % 4)
         for i in range(60)] + [
    "def f(x):\n    return x  # code\n" * 3,
    "emoji 🚀 and CJK 漢字 text here, a lone\r\nCRLF and a NUL \x00 byte",
    f"a model card that mentions the {EOD} token and <|fim_prefix|> as text",  # must not become special ids
    "",                                                                       # an empty document: just EOD
    "x" * 5000,
]
HELDOUT = ["held-out text about crêpes ✓ " * 5, f"held {EOD} out", "short"]


def make_params(**tok) -> "object":
    return parse_params({
        "sources": {"web": {"paths": ["raw/*.jsonl"], "domain": "webtext"}},
        "tokenizer": {"vocab_size": 320, "min_frequency": 2, "eod_token": EOD, **tok},
        "trunk": {"checkpoints": [10]},
    })


def write_curated(source: str, train: list[str], heldout: list[str], shard_docs: int = 16) -> None:
    """A curated dir as `curate` writes it: training shards, held-out shards, stats."""
    root = Path(paths.curated_dir(source))
    for k in range(0, max(len(train), 1), shard_docs):
        write_jsonl_zst(root / f"part-{k // shard_docs:05d}.jsonl.zst",
                        [{"id": f"{source}-{k + i}", "domain": source, "text": t, "meta": {}}
                         for i, t in enumerate(train[k:k + shard_docs])])
    write_jsonl_zst(root / "heldout/part-00000.jsonl.zst",
                    [{"id": f"h{i}", "domain": source, "text": t, "meta": {}} for i, t in enumerate(heldout)])
    write_json(root / "stats.json", {"docs_out": len(train), "heldout_docs": len(heldout),
                                     "bytes_out": sum(len(t.encode()) for t in train),
                                     "heldout_bytes": sum(len(t.encode()) for t in heldout)})


def digest(domain: str = "webtext") -> list[str]:
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in paths.tokens_files(domain)]


def temporaries() -> list[Path]:
    return sorted(Path(paths.tokens_stats("webtext")).parent.glob("*.tmp-*"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Curated shards, a trained tokenizer and a 2-worker tokenization (the pool path)."""
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_curated("web", TEXTS, HELDOUT)
    params = make_params(special_tokens=["<|fim_prefix|>"])
    stages.call(params, "tokenizer")
    stages.call(params, "tokenize", domain="webtext", workers=2)
    yield params, root
    mp.undo()


@pytest.fixture
def small_study(tmp_path, monkeypatch):
    """A fresh study in tmp_path (for tests that break or rewrite outputs)."""
    monkeypatch.chdir(tmp_path)
    write_curated("web", TEXTS[:20], HELDOUT)
    params = make_params()
    stages.call(params, "tokenizer")
    return params


@pytest.mark.parametrize("split,texts", [("train", TEXTS), ("heldout", HELDOUT)])
def test_round_trip_through_megatron(study, split, texts):
    params, _ = study
    tok = Tokenizer.from_file(paths.tokenizer_file())
    eod = tok.token_to_id(EOD)
    special = {eod, tok.token_to_id("<|fim_prefix|>")}
    ds = IndexedDataset(paths.tokens_prefix("webtext", split), mmap=True)
    assert len(ds) == len(texts) and len(ds.document_indices) == len(texts) + 1
    for i, text in enumerate(texts):
        ids = ds[i]
        assert ids.dtype == np.uint16
        assert ids[-1] == eod and not special & set(ids[:-1].tolist())  # EOD only at the end, even if in the text
        assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == text


def test_stats(study):
    stats = read_json(paths.tokens_stats("webtext"))
    assert set(stats) == {"domain", "source", "vocab_size", "dtype", "eod", "train", "heldout", "files"}
    tok = Tokenizer.from_file(paths.tokenizer_file())
    assert stats["domain"] == "webtext" and stats["source"] == "web" and stats["dtype"] == "uint16"
    assert stats["vocab_size"] == tok.get_vocab_size() and stats["eod"] == tok.token_to_id(EOD)
    curated = read_json(Path(paths.curated_dir("web")) / "stats.json")
    for split, texts, n_docs in (("train", TEXTS, curated["docs_out"]), ("heldout", HELDOUT, curated["heldout_docs"])):
        ds = IndexedDataset(paths.tokens_prefix("webtext", split), mmap=True)
        s = stats[split]
        assert set(s) == {"documents", "tokens", "bytes", "bytes_per_token"}
        assert s["documents"] == n_docs == len(ds)
        assert s["tokens"] == int(ds.sequence_lengths.sum())
        assert s["bytes"] == sum(len(t.encode()) for t in texts)
        assert s["bytes_per_token"] == round(s["bytes"] / s["tokens"], 4)


def test_identical_to_megatron_builder(study, tmp_path):
    """Our streamed writer produces the bytes megatron-core's IndexedDatasetBuilder would."""
    tok = tokenize.prepare(Tokenizer.from_file(paths.tokenizer_file()))
    eod = tok.token_to_id(EOD)
    for split, texts in (("train", TEXTS), ("heldout", HELDOUT)):
        ref = str(tmp_path / split)
        builder = IndexedDatasetBuilder(ref + ".bin", dtype=np.uint16)
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False).ids + [eod]
            builder.add_document(ids, [len(ids)])
        builder.finalize(ref + ".idx")
        ours = paths.tokens_prefix("webtext", split)
        for ext in (".bin", ".idx"):
            assert Path(ours + ext).read_bytes() == Path(ref + ext).read_bytes(), split + ext


def test_gpt_dataset_builds(study):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    stats = read_json(paths.tokens_stats("webtext"))

    class Info:  # what GPTDataset needs from a tokenizer
        eod, pad, vocab_size = stats["eod"], -1, stats["vocab_size"]
        unique_identifiers = {"class": "test"}

    config = GPTDatasetConfig(random_seed=1, sequence_length=32, blend=([paths.tokens_prefix("webtext")], None),
                              split="1,0,0", tokenizer=Info(), reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False, create_attention_mask=False, path_to_cache="")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, config).build()[0]
    assert len(train) == (stats["train"]["tokens"] - 1) // 32
    sample = train[0]["tokens"]
    assert sample.shape == (32,) and int(sample.max()) < stats["vocab_size"]


def test_workers_give_identical_bytes(study, tmp_path):
    """1 worker (in process) and 2 workers (fed tiny chunks, so results come back out of order) agree."""
    params, _ = study
    two = digest()
    stages.call(params, "tokenize", domain="webtext", workers=1)
    assert digest() == two
    assert not temporaries()
    tok = Tokenizer.from_file(paths.tokenizer_file())
    files = tokenize.shards("web", "train")
    for workers, chunk in ((2, 300), (3, 1000), (1, 64)):
        prefix = str(tmp_path / f"w{workers}")
        with tokenize.Encoder(paths.tokenizer_file(), tok.token_to_id(EOD), np.uint16, workers) as enc:
            tokenize.write_split(enc, np.uint16, files, prefix, chunk_bytes=chunk)
        for ext in (".bin", ".idx"):
            assert Path(tokenize._tmp(prefix + ext)).read_bytes() == \
                Path(paths.tokens_prefix("webtext") + ext).read_bytes(), (workers, chunk, ext)


def test_rerun_identical_and_summary(study, capsys):
    params, _ = study
    first = digest()
    stages.call(params, "tokenize", domain="webtext", workers=2)
    assert digest() == first
    assert not temporaries()
    out = capsys.readouterr().out
    assert "tokenize web:" in out and "tok/s" in out and "2 workers" in out


def test_user_tokenizer_used_as_is(tmp_path, monkeypatch):
    """A user tokenizer.json (ids > 65,535, a BOS post-processor, truncation set) is copied and used as is:
    int32 tokens, its own ids, no BOS, nothing truncated."""
    monkeypatch.chdir(tmp_path)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: 70_000 + i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"</s>": 3, "<s>": 4})
    user = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    user.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    user.decoder = decoders.ByteLevel()
    user.add_special_tokens(["</s>", "<s>"])
    from tokenizers.processors import TemplateProcessing

    user.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 4)])
    user.enable_truncation(max_length=8)
    user.save("user.json")
    write_curated("web", TEXTS[:5] + [TEXTS[-1]], HELDOUT)
    params = make_params(path="user.json", eod_token="</s>")
    stages.call(params, "tokenizer")
    assert Path(paths.tokenizer_file()).read_bytes() == Path("user.json").read_bytes()
    stages.call(params, "tokenize", domain="webtext", workers=2)
    stats = read_json(paths.tokens_stats("webtext"))
    assert stats["dtype"] == "int32" and stats["eod"] == 3
    ds = IndexedDataset(paths.tokens_prefix("webtext"), mmap=True)
    user = Tokenizer.from_file("user.json")
    for i, text in enumerate(TEXTS[:5] + [TEXTS[-1]]):
        ids = ds[i]
        assert ids.dtype == np.int32
        assert ids.tolist() == [vocab[ch] for ch in _byte_level(text)] + [3]
        assert user.decode(ids[:-1].tolist()) == text


def _byte_level(text: str) -> str:
    """The ByteLevel characters of `text` (one per UTF-8 byte)."""
    table = {b: ch for b, ch in zip(range(256), _bytes_to_unicode())}
    return "".join(table[b] for b in text.encode())


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def test_failed_run_keeps_previous_outputs(small_study):
    """A worker error (a corrupt shard) stops the run: previous outputs untouched, no temporaries."""
    params = small_study
    stages.call(params, "tokenize", domain="webtext", workers=2)
    before = digest()
    shard = Path(paths.curated_dir("web")) / "part-00001.jsonl.zst"
    write_jsonl_zst(shard, [{"id": "bad", "text": "fine"}])
    with open(shard, "ab") as f:  # a second zstd frame holding a truncated line
        import zstandard

        f.write(zstandard.ZstdCompressor().compress(b'{"id": "x", "text": "unterminated\n'))
    with pytest.raises(ValueError, match=r"part-00001\.jsonl\.zst: not a curated record"):
        stages.call(params, "tokenize", domain="webtext", workers=2)
    assert digest() == before
    assert not temporaries()


def test_interrupted_publish_never_leaves_a_mismatched_pair(small_study, monkeypatch):
    params = small_study
    stages.call(params, "tokenize", domain="webtext", workers=1)
    write_curated("web", TEXTS[20:40], HELDOUT[:1])
    real, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # (1: the staged stats file) after the new train .bin is in place, before its .idx
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(tokenize.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        stages.call(params, "tokenize", domain="webtext", workers=1)
    monkeypatch.setattr(tokenize.os, "replace", real)
    assert not Path(paths.tokens_stats("webtext")).exists()            # the domain reads as unfinished
    assert not Path(paths.tokens_prefix("webtext") + ".idx").exists()  # and the new .bin has no (old) index
    stages.call(params, "tokenize", domain="webtext", workers=1)                            # the next run cleans up and completes
    assert not temporaries()
    assert read_json(paths.tokens_stats("webtext"))["train"]["documents"] == 20


def test_killed_run_leaves_nothing_complete(tmp_path, monkeypatch):
    """SIGKILL mid-run: old outputs stay complete and untouched; the next run removes the temporaries."""
    monkeypatch.chdir(tmp_path)
    big = [f"{i} " + " ".join(f"w{(i * 31 + j) % 997}" for j in range(2000)) for i in range(300)]
    write_curated("web", big[:8], HELDOUT)
    params = make_params()
    stages.call(params, "tokenizer")
    stages.call(params, "tokenize", domain="webtext", workers=1)
    before = digest()
    write_curated("web", big, HELDOUT, shard_docs=50)
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); from workflow import stages; "
              "from workflow.params import parse_params; "
              "stages.call(parse_params(json.loads(sys.argv[2])), 'tokenize', domain='webtext', workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(ROOT), json.dumps(params.model_dump(mode="json"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while not any(p.name.endswith(f".tmp-{proc.pid}") for p in temporaries()):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert temporaries()                   # the killed run's partial files...
    assert digest() == before              # ...next to the old, complete outputs
    stages.call(params, "tokenize", domain="webtext", workers=2)
    assert not temporaries()
    assert read_json(paths.tokens_stats("webtext"))["train"]["documents"] == 300


RSS_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from workflow import tokenize

def peak(pid):  # VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's over exec)
    text = open(f"/proc/{pid}/status").read()
    return int(text.split("VmHWM:")[1].split()[0])

files, tok_file, workers, chunk = json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with tokenize.Encoder(tok_file, 0, np.uint16, workers) as enc:
    counts = tokenize.write_split(enc, np.uint16, files, sys.argv[6], chunk_bytes=chunk)
    workers = max(peak(p.pid) for p in enc.pool._pool)
print(json.dumps({"self": peak("self"), "workers": workers, **counts}))
"""


def test_peak_rss_independent_of_corpus_size(tmp_path, monkeypatch):
    """With 64 KiB chunks and 2 workers the data held at once is bounded by ~1 MB (4 chunks in flight,
    2 being encoded, their tokens): corpora of ~4 MB and ~15 MB (many times that bound, and ~4 MB more
    tokens than the small one) must peak at the same RSS (VmHWM), in the parent and in every worker."""
    monkeypatch.chdir(tmp_path)
    words = "the of and to in is was for on that with as by at from his her they this which".split()
    line = " ".join(words[(j * 7) % len(words)] for j in range(300))  # ~1.3 KB documents: many index entries
    docs = [f"{i} {line}" for i in range(12_000)]
    write_curated("web", docs[:200], [])
    stages.call(make_params(), "tokenizer")
    peaks = {}
    for n in (3_000, 12_000):
        root = Path(f"c{n}")
        files = []
        for k in range(0, n, 2000):
            files.append(str(root / f"part-{k:06d}.jsonl.zst"))
            write_jsonl_zst(files[-1], [{"id": str(i), "text": t} for i, t in enumerate(docs[k:min(k + 2000, n)])], level=1)
        proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(ROOT), json.dumps(files), paths.tokenizer_file(),
                               "2", str(64 << 10), str(root / "out")], capture_output=True, text=True, check=True)
        peaks[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert peaks[n]["documents"] == n
    small, large = peaks[3_000], peaks[12_000]
    corpus_mb = sum(len(d) for d in docs) / 2**20
    assert corpus_mb > 12
    print(f"corpus {corpus_mb:.0f} MB; peak RSS KiB {peaks}")
    for who in ("self", "workers"):  # KiB; generous slack for allocator noise, far below the corpus growth
        assert large[who] - small[who] < 8 * 1024, (who, small, large)


def test_dtype_choice():
    assert tokenize.token_dtype(4096) is np.uint16
    assert tokenize.token_dtype(65_499) is np.uint16
    assert tokenize.token_dtype(65_500) is np.int32
    assert tokenize.token_dtype(128_256) is np.int32


def test_default_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(tokenize.WORKERS_ENV, raising=False)
    assert tokenize.default_workers() == (len(os.sched_getaffinity(0)), "available CPUs")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # Snakemake's `threads`
    assert tokenize.default_workers() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv(tokenize.WORKERS_ENV, "5")
    assert tokenize.default_workers() == (5, tokenize.WORKERS_ENV)
    monkeypatch.setenv(tokenize.WORKERS_ENV, "0")
    with pytest.raises(ValueError, match=tokenize.WORKERS_ENV):
        tokenize.default_workers()


def test_missing_inputs_say_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params()
    with pytest.raises(FileNotFoundError, match="python -m workflow tokenizer"):
        stages.call(params, "tokenize", domain="webtext")
    write_curated("web", TEXTS[:20], [])
    stages.call(params, "tokenizer")
    (Path(paths.curated_dir("web")) / "stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="run `python -m workflow curate --source web` first"):
        stages.call(params, "tokenize", domain="webtext")
