"""Tokenizer: trains a byte-level BPE with the EOD token, deterministically; a user file is used as is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from workflow import stages
from workflow import paths, tokenizer
from workflow.io import read_json, write_json, write_jsonl_zst
from workflow.params import ParamsError, parse_params

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


def make_params(**tok):
    return parse_params({
        "sources": {"prose": {"paths": ["raw/p.jsonl"], "domain": "prose"},
                    "code": {"paths": ["raw/c.jsonl"], "domain": "code"}},
        "tokenizer": {"vocab_size": 400, "min_frequency": 2, "eod_token": "<|eod|>", **tok},
        "trunk": {"checkpoints": [10]},
    })


def fake_curated(source: str, texts: list[str]) -> None:
    """A curated dir as `curate` writes it (training shard, held-out shard, stats)."""
    root = Path(paths.curated_dir(source))
    write_jsonl_zst(root / "part-00000.jsonl.zst", [{"id": f"{source}-{i}", "domain": source, "text": t}
                                                  for i, t in enumerate(texts)])
    write_jsonl_zst(root / "heldout/part-00000.jsonl.zst", [{"id": "h", "domain": source, "text": "HELDOUT ZZZQQQ"}])
    write_json(root / "stats.json", {"bytes_out": sum(len(t.encode()) for t in texts)})


@pytest.fixture
def curated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_curated("prose", [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)) + "." for i in range(200)])
    fake_curated("code", [f"def f{i}(x):\n    return x * {i} + len('{WORDS[i % len(WORDS)]}')\n" for i in range(200)])
    return tmp_path


def test_trains_with_eod(curated, capsys):
    stages.call(make_params(), "tokenizer")
    tok = Tokenizer.from_file(paths.tokenizer_file())
    meta = read_json(Path(paths.tokenizer_dir()) / "meta.json")
    assert tok.token_to_id("<|eod|>") == meta["eod_id"] is not None
    assert 256 < tok.get_vocab_size() <= 400
    assert meta["vocab_size"] == tok.get_vocab_size()
    assert set(meta["sources"]) == {"prose", "code"}
    text = "def quick(fox):\n    return 'héllo wörld ✓'\n"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: lossless
    # held-out text is never sampled: its rare merge cannot be learnt
    assert "ZZZ" not in "".join(tok.get_vocab())
    assert "tokenizer: trained" in capsys.readouterr().out


def test_sample_budget_is_proportional_and_bounded(curated):
    params = make_params(sample_bytes=3000)
    texts = list(tokenizer.sample_texts([paths.curated_dir(s) for s in params.sources], params.tokenizer.sample_bytes))
    assert 0 < sum(len(t.encode()) for t in texts) <= 3000
    assert texts == list(tokenizer.sample_texts([paths.curated_dir(s) for s in params.sources], params.tokenizer.sample_bytes))
    assert tokenizer.plan_budgets(100, {"a": 300, "b": 100}) == {"a": 75, "b": 25}
    assert tokenizer.plan_budgets(1000, {"a": 300, "b": 100}) == {"a": 300, "b": 100}


def test_deterministic_across_processes(curated):
    """Two fresh interpreters (different hash seeds) write byte-identical files."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from workflow import stages; "
              "from workflow.params import parse_params; import json; "
              "stages.call(parse_params(json.loads(sys.argv[2])), 'tokenizer')")
    data = make_params().model_dump(mode="json")
    outputs = []
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", script, str(ROOT), json.dumps(data)], check=True,
                       env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, capture_output=True)
        outputs.append((Path(paths.tokenizer_file()).read_bytes(),
                        (Path(paths.tokenizer_dir()) / "meta.json").read_bytes()))
    assert outputs[0] == outputs[1]


def test_user_tokenizer_copied_as_is(curated):
    stages.call(make_params(), "tokenizer")
    user = Path("my-tokenizer.json")
    # A different serialisation (compact JSON) must survive byte for byte.
    user.write_text(json.dumps(json.loads(Path(paths.tokenizer_file()).read_text())))
    stages.call(make_params(path=str(user)), "tokenizer")
    assert Path(paths.tokenizer_file()).read_bytes() == user.read_bytes()
    meta = read_json(Path(paths.tokenizer_dir()) / "meta.json")
    assert meta["trained"] is False and meta["user_path"] == str(user)


def test_user_tokenizer_errors(curated):
    with pytest.raises(ParamsError, match=r"tokenizer\.path"):
        stages.call(make_params(path="missing.json"), "tokenizer")
    Path("bad.json").write_text("{not json")
    with pytest.raises(ParamsError, match=r"tokenizer\.path"):
        stages.call(make_params(path="bad.json"), "tokenizer")
    stages.call(make_params(), "tokenizer")
    with pytest.raises(ParamsError, match=r"tokenizer\.eod_token"):
        stages.call(make_params(path=paths.tokenizer_file(), eod_token="<|nope|>"), "tokenizer")


def test_special_tokens_follow_eod(curated):
    stages.call(make_params(special_tokens=["<|user|>", "<|fim_middle|>"]), "tokenizer")
    tok = Tokenizer.from_file(paths.tokenizer_file())
    meta = read_json(Path(paths.tokenizer_dir()) / "meta.json")
    assert [tok.token_to_id(t) for t in ("<|eod|>", "<|user|>", "<|fim_middle|>")] == [0, 1, 2]
    assert meta["special_tokens"] == {"<|user|>": 1, "<|fim_middle|>": 2} and meta["eod_id"] == 0
    with pytest.raises(ParamsError, match="distinct"):
        make_params(special_tokens=["<|eod|>"])
    # a user tokenizer must already have them
    user = Path("user.json")
    user.write_bytes(Path(paths.tokenizer_file()).read_bytes())
    stages.call(make_params(path=str(user), special_tokens=["<|user|>"]), "tokenizer")
    with pytest.raises(ParamsError, match=r"tokenizer\.special_tokens"):
        stages.call(make_params(path=str(user), special_tokens=["<|assistant|>"]), "tokenizer")
