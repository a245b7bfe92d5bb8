"""Curate: malformed input is counted, valid input is accounted for, output is deterministic."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import zstandard

from workflow import stages
from workflow import curate, paths
from workflow.curate import common
from workflow.io import read_json, read_jsonl
from workflow.params import ParamsError, parse_params

STEPS_OFF = {"ftfy": False, "language": None, "gopher_repetition": None, "gopher_quality": None, "c4": None,
             "fineweb": None, "pii": None}


def make_params(paths_=("raw/*.jsonl*",), sources=None, eval_files=(), **curation):
    cfg = {"min_chars": 10, "heldout_fraction": 0.3, "shard_docs": 3, "steps": STEPS_OFF, "near_dedup": None,
           "decontamination": None, **curation}
    return parse_params({
        "sources": sources or {"web": {"paths": list(paths_), "domain": "web"}},
        "curation": cfg,
        "trunk": {"checkpoints": [10]},
        "eval": {"decontaminate_files": list(eval_files)},
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
    "binary_junk": [bytes(b for b in range(256) if b != 10)],  # counted as invalid_utf8
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


def load_split(split: str, source: str = "web") -> list[dict]:
    root = Path(paths.curated_dir(source))
    root = root if split == "train" else root / "heldout"
    return [r for p in sorted(root.glob("part-*.jsonl.zst")) for r in read_jsonl(p)]


def stats_of(source: str = "web") -> dict:
    return read_json(Path(paths.curated_dir(source)) / "stats.json")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_accounting_and_malformed(corpus, capsys):
    stages.build(make_params(max_doc_bytes=200), "curate", source="web")
    stats = stats_of()
    expected = {k: len(v) for k, v in MALFORMED.items() if k != "binary_junk"}
    expected["invalid_utf8"] += 1
    assert stats["invalid"] == expected
    assert stats["invalid_examples"]["bad_json"] == ["raw/a.jsonl.zst:21", "raw/a.jsonl.zst:22"]
    assert stats["dropped"] == {"min_chars": 1}
    assert stats["duplicates"] == {"exact": 2, "near": 0}
    assert stats["decontaminated"] == 0
    n_valid = len(VALID) + 2 + 2 + 1  # + NFC doc, CRLF doc + duplicates + short
    assert stats["docs_in"] == n_valid + sum(len(v) for v in MALFORMED.values())
    # every valid line survives or is dropped by a named filter / dedup
    assert n_valid == stats["docs_out"] + stats["heldout_docs"] + sum(stats["dropped"].values()) + 2
    train, heldout = load_split("train"), load_split("heldout")
    assert len(train) == stats["docs_out"] and len(heldout) == stats["heldout_docs"]
    assert 0 < len(heldout) < len(train)
    texts = [r["text"] for r in train + heldout]
    assert sorted(texts) == sorted(VALID + ["Caf\u00e9 " * 5, "line one\nline two\nline three"])
    assert all(r["domain"] == "web" and r["id"] for r in train + heldout)
    assert len({r["id"] for r in train + heldout}) == len(texts)
    assert stats["bytes_out"] == sum(len(r["text"].encode()) for r in train)
    assert len(list(Path(paths.curated_dir("web")).glob("part-*.jsonl.zst"))) == -(-len(train) // 3)
    out = capsys.readouterr()
    assert "raw/a.jsonl.zst:" in out.err and "(bad_json)" in out.err
    assert "curate web: " in out.out  # one-line summary


def test_heldout_is_by_content_and_deterministic(corpus):
    stages.build(make_params(), "curate", source="web")
    heldout = {r["text"] for r in load_split("heldout")}
    assert heldout == {t for t in VALID if curate.is_heldout(curate.text_digest(t), 0.3)}


def test_rerun_and_killed_run_are_byte_identical(corpus, monkeypatch):
    root = Path(paths.curated_dir("web"))
    stages.build(make_params(), "curate", source="web")
    first = tree_digest(root)
    stages.build(make_params(), "curate", source="web")  # every step again: the same bytes
    assert tree_digest(root) == first
    shutil.rmtree(paths.ARTIFACTS)

    calls = {"n": 0}
    real_write = common.JsonlZst.write

    def dying_write(self, record):
        calls["n"] += 1
        if calls["n"] == 25:  # inside the third shard
            raise KeyboardInterrupt
        real_write(self, record)

    monkeypatch.setattr(common.JsonlZst, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        stages.build(make_params(), "curate", source="web")
    assert not root.exists()
    monkeypatch.setattr(common.JsonlZst, "write", real_write)
    stages.build(make_params(), "curate", source="web")
    assert tree_digest(root) == first
    leftovers = [p for p in Path(paths.ARTIFACTS).rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers


def test_id_key_and_meta(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "raw/a.jsonl", [doc(VALID[0], uid="doc-1", meta={"lang": "en"}), doc(VALID[1])])
    params = make_params(sources={"web": {"paths": ["raw/*.jsonl"], "domain": "web", "id_key": "uid"}}, heldout_fraction=0.0)
    stages.build(params, "curate", source="web")
    recs = load_split("train")
    assert recs[0]["id"] == "doc-1" and recs[0]["meta"]["lang"] == "en"
    assert recs[0]["meta"]["origin"] == "raw/a.jsonl:1"
    assert recs[1]["id"] and recs[1]["id"] != "doc-1"  # hash fallback when the key is absent
    assert load_split("heldout") == []


def test_ids_default_to_the_id_field(tmp_path, monkeypatch):
    """No `id_key` in the source: the `id` field is kept (datatrove's convention); a document without one gets
    a hash of source, path and line, the same on every run; `id_key: null` hashes every document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "raw/a.jsonl", [doc(VALID[0], id="doc-1"), doc(VALID[1]), doc(VALID[2], id=7),
                                           doc(VALID[3], id="")])
    pq.write_table(pa.table({"id": ["pq-1", None], "text": VALID[4:6]}), tmp_path / "raw/b.parquet")
    source = {"paths": ["raw/a.jsonl", "raw/b.parquet"], "domain": "web"}
    stages.build(make_params(sources={"web": source}, heldout_fraction=0.0), "curate", source="web")
    ids = {r["text"]: r["id"] for r in load_split("train")}
    assert ids[VALID[0]] == "doc-1" and ids[VALID[2]] == "7" and ids[VALID[4]] == "pq-1"
    hashed = [ids[VALID[i]] for i in (1, 3, 5)]
    assert all(re.fullmatch(r"[0-9a-f]{20}", h) for h in hashed) and len(set(hashed)) == 3
    shutil.rmtree(paths.ARTIFACTS)
    stages.build(make_params(sources={"web": source}, heldout_fraction=0.0), "curate", source="web")
    assert {r["text"]: r["id"] for r in load_split("train")} == ids
    stages.build(make_params(sources={"web": {**source, "id_key": None}}, heldout_fraction=0.0), "curate", source="web")
    assert all(re.fullmatch(r"[0-9a-f]{20}", r["id"]) for r in load_split("train"))


def test_parquet_and_text_key(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"body": [VALID[0], None, VALID[1], ""], "n": [1, 2, 3, 4]}), tmp_path / "raw/a.parquet")
    params = make_params(sources={"web": {"paths": ["raw/*.parquet"], "domain": "web", "text_key": "body"}}, heldout_fraction=0.0)
    stages.build(params, "curate", source="web")
    assert [r["text"] for r in load_split("train")] == VALID[:2]
    assert stats_of()["invalid"] == {"empty_text": 1, "null_text": 1}


def test_missing_paths_raise_params_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=r"sources\.web\.paths: 'nowhere/\*\.jsonl\.zst' matches no file"):
        stages.call(make_params(paths_=("nowhere/*.jsonl.zst",)), "curate_shard", source="web", part="00000")
    assert not Path(paths.ARTIFACTS).exists()


def test_missing_eval_file_is_an_error_before_work(corpus):
    with pytest.raises(FileNotFoundError, match=r"missing input of curate@web: nope\.jsonl"):
        stages.build(make_params(eval_files=["nope.jsonl"], decontamination={}), "curate", source="web")
    assert not Path(paths.ARTIFACTS).exists()


def test_no_dedup_keeps_duplicates(corpus):
    stages.build(make_params(exact_dedup=False, max_doc_bytes=200), "curate", source="web")
    stats = stats_of()
    assert stats["duplicates"]["exact"] == 0
    assert stats["docs_out"] + stats["heldout_docs"] == len(VALID) + 2 + 2


def test_truncated_file_counted_not_fatal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "raw/a.jsonl.zst", [doc(t) for t in VALID])
    data = (tmp_path / "raw/a.jsonl.zst").read_bytes()
    (tmp_path / "raw/a.jsonl.zst").write_bytes(data[: len(data) // 2])  # killed download
    write_lines(tmp_path / "raw/b.jsonl", [doc(VALID[0] + " extra words")])
    stages.build(make_params(), "curate", source="web")
    stats = stats_of()
    assert stats["invalid"].get("unreadable_file") == 1
    kept = stats["docs_out"] + stats["heldout_docs"]
    assert 1 <= kept < len(VALID) + 1
    assert stats["docs_in"] == kept + sum(stats["invalid"].values()) + sum(stats["dropped"].values())


def test_unknown_source(corpus):
    with pytest.raises(ParamsError, match=r"curate --source nope: not declared by the study \(declared: web\)"):
        stages.build(make_params(), "curate", source="nope")


def test_stage_commands_need_their_inputs(corpus):
    with pytest.raises(FileNotFoundError, match="curate_shard --source web --part 00000"):
        stages.call(make_params(), "curate_split", source="web")
    with pytest.raises(FileNotFoundError, match="curate_shard --source web --part 00000"):
        stages.call(make_params(), "curate", source="web")


def test_grouped_files_give_the_same_curated_data(corpus):
    """Three files in one curate_shard job or one job each: the same documents, ids and accounting."""
    stages.build(make_params(max_doc_bytes=200), "curate", source="web")
    one_each, stats_each = load_split("train") + load_split("heldout"), stats_of()
    assert len(list(Path(paths.ARTIFACTS, ".curate/web").glob("shard-*"))) == 3
    shutil.rmtree(paths.ARTIFACTS)
    stages.build(make_params(max_doc_bytes=200, files_per_job=3), "curate", source="web")
    assert [p.name for p in Path(paths.ARTIFACTS, ".curate/web").glob("shard-*")] == ["shard-00000"]
    assert load_split("train") + load_split("heldout") == one_each
    keep = ("docs_in", "docs_out", "invalid", "dropped", "duplicates", "heldout_docs", "inputs")
    assert {k: stats_of()[k] for k in keep} == {k: stats_each[k] for k in keep}
