"""Curate: malformed input is counted, valid input is accounted for, output is deterministic."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import zstandard

from workflow import curate, paths
from workflow.io import read_json, read_jsonl
from workflow.params import ParamsError, parse_params


def make_params(paths_=("raw/*.jsonl*",), **curation):
    cfg = {"min_chars": 10, "heldout_fraction": 0.3, "shard_docs": 3, **curation}
    return parse_params({
        "sources": {"web": {"paths": list(paths_), "domain": "web"}},
        "curation": cfg,
        "trunk": {"checkpoints": [10]},
    })


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in lines)
    if path.suffix == ".zst":
        data = zstandard.ZstdCompressor().compress(data)
    elif path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def doc(text, **extra) -> bytes:
    return json.dumps({"text": text, **extra}).encode()


CRLF = "line one\r\nline two\rline three"
VALID = [f"Document number {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(40)]
MALFORMED = {
    "bad_json": [b'{"text": "unterminated', b"not json at all"],
    "invalid_utf8": [b'{"text": "caf\xe9 au lait, long enough text"}', b'{"text": "lone \\ud800 surrogate, long enough"}'],
    "missing_text": [b'{"body": "no text key here at all"}'],
    "null_text": [b'{"text": null}'],
    "non_string_text": [b'{"text": 42}', b'{"text": ["a", "b"]}'],
    "empty_text": [b'{"text": ""}', b'{"text": "   \\n  "}'],
    "too_large": [doc("y" * 300)],
    "not_object": [b"[1, 2, 3]"],
    "blank_line": [b"   "],
}


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines_a = [doc(t, meta={"k": i}) for i, t in enumerate(VALID[:20])]
    lines_a += [line for bad in MALFORMED.values() for line in bad]
    lines_a += [doc(VALID[0]), doc(VALID[1])]  # exact duplicates
    lines_a += [doc("short")]  # min_chars
    write_lines(tmp_path / "raw/a.jsonl.zst", lines_a)
    write_lines(tmp_path / "raw/b.jsonl.gz", [doc(t) for t in VALID[20:30]])
    write_lines(tmp_path / "raw/c.jsonl", [doc(t) for t in VALID[30:]] + [doc("Cafe\u0301 " * 5), doc(CRLF)])
    return tmp_path


def load_split(split: str) -> list[dict]:
    root = Path(paths.curated_dir("web"))
    root = root if split == "train" else root / "heldout"
    return [r for p in sorted(root.glob("part-*.jsonl.zst")) for r in read_jsonl(p)]


def test_accounting_and_malformed(corpus, capsys):
    curate.run(make_params(max_doc_bytes=200), "web")
    stats = read_json(Path(paths.curated_dir("web")) / "stats.json")
    for reason, lines in MALFORMED.items():
        assert stats["invalid"].get(reason) == len(lines), reason
    assert stats["dropped"] == {"min_chars": 1}
    assert stats["duplicates"] == {"exact": 2, "near": 0}
    assert stats["decontaminated"] == 0
    n_valid = len(VALID) + 2 + 2 + 1  # + NFC doc, CRLF doc + duplicates + short
    assert stats["docs_in"] == n_valid + sum(len(v) for v in MALFORMED.values())
    assert n_valid == stats["docs_out"] + stats["heldout_docs"] + 1 + 2
    train, heldout = load_split("train"), load_split("heldout")
    assert len(train) == stats["docs_out"] and len(heldout) == stats["heldout_docs"]
    assert 0 < len(heldout) < len(train)
    texts = [r["text"] for r in train + heldout]
    # every valid doc survives once, NFC- and newline-normalised
    assert sorted(texts) == sorted(VALID + ["Caf\u00e9 " * 5, "line one\nline two\nline three"])
    assert all(r["domain"] == "web" and r["id"] for r in train + heldout)
    assert len({r["id"] for r in train + heldout}) == len(texts)
    assert stats["bytes_out"] == sum(len(r["text"].encode()) for r in train)
    # shards hold shard_docs each
    assert len(list(Path(paths.curated_dir("web")).glob("part-*.jsonl.zst"))) == -(-len(train) // 3)
    err = capsys.readouterr().err
    assert "raw/a.jsonl.zst:" in err and "(bad_json)" in err


def test_heldout_is_by_content_and_deterministic(corpus):
    curate.run(make_params(), "web")
    heldout = {r["text"] for r in load_split("heldout")}
    expected = {t for t in VALID if curate.is_heldout(curate.text_digest(t), 0.3)}
    assert heldout == expected


def test_rerun_is_byte_identical(corpus):
    root = Path(paths.curated_dir("web"))

    def digest():
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    curate.run(make_params(), "web")
    first = digest()
    curate.run(make_params(), "web")
    assert digest() == first
    assert not list(root.parent.glob("web.tmp-*")) and not list(root.parent.glob("web.old-*"))


def test_id_key_and_meta(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "raw/a.jsonl", [doc(VALID[0], uid="doc-1", meta={"lang": "en"}), doc(VALID[1])])
    params = parse_params({
        "sources": {"web": {"paths": ["raw/*.jsonl"], "domain": "web", "id_key": "uid"}},
        "curation": {"heldout_fraction": 0.0, "min_chars": 10},
        "trunk": {"checkpoints": [10]},
    })
    curate.run(params, "web")
    recs = load_split("train")
    assert recs[0]["id"] == "doc-1" and recs[0]["meta"]["lang"] == "en"
    assert recs[0]["meta"]["origin"] == "raw/a.jsonl:1"
    assert recs[1]["id"] and recs[1]["id"] != "doc-1"  # hash fallback when the key is absent
    assert load_split("heldout") == []


def test_missing_paths_raise_params_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=r"sources\.web\.paths"):
        curate.run(make_params(paths_=("nowhere/*.jsonl.zst",)), "web")
    assert not Path(paths.curated_dir("web")).exists()


def test_no_dedup_keeps_duplicates(corpus):
    curate.run(make_params(exact_dedup=False, max_doc_bytes=200), "web")
    stats = read_json(Path(paths.curated_dir("web")) / "stats.json")
    assert stats["duplicates"]["exact"] == 0
    assert stats["docs_out"] + stats["heldout_docs"] == len(VALID) + 2 + 2


def test_truncated_file_counted_not_fatal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "raw/a.jsonl.zst", [doc(t) for t in VALID])
    data = (tmp_path / "raw/a.jsonl.zst").read_bytes()
    (tmp_path / "raw/a.jsonl.zst").write_bytes(data[: len(data) // 2])  # killed download
    write_lines(tmp_path / "raw/b.jsonl", [doc(VALID[0] + " extra words")])
    curate.run(make_params(), "web")
    stats = read_json(Path(paths.curated_dir("web")) / "stats.json")
    assert stats["invalid"].get("unreadable_file") == 1
    kept = stats["docs_out"] + stats["heldout_docs"]
    assert 1 <= kept < len(VALID) + 1
    assert stats["docs_in"] == kept + sum(stats["invalid"].values()) + sum(stats["dropped"].values())


def test_unknown_source(corpus):
    with pytest.raises(ParamsError, match=r"sources\.nope"):
        curate.run(make_params(), "nope")
