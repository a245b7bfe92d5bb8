"""Artifact integrity: truncated or corrupted files fail with one line naming them, pickles never run code.

One tiny study is built once per module by the real stages (curate -> tokenizer -> tokenize -> trunk
-> merge); each test corrupts a copy of it and calls the stage code that reads the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from workflow import stages
from workflow import cli, integrity, paths
from workflow.errors import StageError
from workflow.evaluate.heldout import heldout_metrics
from workflow.evaluate.model import load_model
from workflow.io import read_json, write_json
from workflow.params import parse_params
from workflow.train import checkpoint as ckpt
from workflow.train.data import DataStream, TokenizerInfo, domain_weights
from workflow.train.loop import Session

WORDS = "the a cat dog sat on mat ran far and then slept under tree by river in morning light".split()
STUDY = {
    "sources": {"web": {"paths": ["raw/*.jsonl"], "domain": "web"}},
    "curation": {"min_chars": 10, "heldout_fraction": 0.2, "shard_docs": 40, "near_dedup": None,
                 "decontamination": None,
                 "steps": {"ftfy": False, "language": None, "gopher_repetition": None, "gopher_quality": None,
                           "c4": None, "fineweb": None, "pii": None}},
    "tokenizer": {"vocab_size": 300, "eod_token": "<|endoftext|>"},
    "model": {"backend": "cpu", "num_layers": 1, "hidden_size": 32, "num_attention_heads": 4, "num_query_groups": 2,
              "ffn_hidden_size": 64, "seq_length": 32},
    "trunk": {"checkpoints": [2, 3], "seed": 7, "warmup_steps": 1, "global_batch_size": 2, "micro_batch_size": 2,
              "save_interval": 10},
    "merges": {"avg": {"models": ["main@2", "main@3"]}},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A study dir after curate, tokenizer, tokenize, trunk (2 checkpoints) and merge, all untouched."""
    import random

    root = tmp_path_factory.mktemp("study")
    rng = random.Random(0)
    (root / "raw").mkdir()
    (root / "raw/web.jsonl").write_text("".join(
        f'{{"text": "{" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 90)))}."}}\n' for _ in range(120)))
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY))
    cwd = os.getcwd()
    os.chdir(root)
    old_threads = os.environ.get("ARBOR_THREADS")
    os.environ["ARBOR_THREADS"] = "1"
    try:
        params = parse_params(STUDY)
        stages.build(params, "curate", source="web")
        stages.call(params, "tokenizer")
        stages.call(params, "tokenize", domain="web", workers=1)
        stages.call(params, "trunk")
        stages.call(params, "merge", name="avg")
    finally:
        os.chdir(cwd)
        if old_threads is None:
            os.environ.pop("ARBOR_THREADS", None)
        else:
            os.environ["ARBOR_THREADS"] = old_threads
    return root


@pytest.fixture
def study(built, tmp_path, monkeypatch):
    """cwd = a fresh copy of the built study; returns its params."""
    shutil.copytree(built, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARBOR_THREADS", "1")
    return parse_params(STUDY)


def truncate(path: str | Path) -> str:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return f"{path}: truncated ({len(data) // 2:,} of {len(data):,} bytes)"


def flip(path: str | Path) -> str:
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(path).write_bytes(bytes(data))
    return f"{path}: checksum mismatch"


def single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- the module ---------------------------------------------------------------------------------

def test_manifest_and_verify(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 3_000_000)  # several 1 MiB blocks
    (tmp_path / "sub/b.txt").write_text("hello")
    (tmp_path / "meta.json").write_text("{}")
    files = integrity.manifest(tmp_path, exclude=["meta.json"])
    assert list(files) == ["a.bin", "sub/b.txt"]
    assert files["a.bin"] == {"sha256": hashlib.sha256(b"x" * 3_000_000).hexdigest(), "bytes": 3_000_000}
    assert integrity.manifest([tmp_path / "sub/b.txt"], tmp_path) == {"sub/b.txt": files["sub/b.txt"]}
    integrity.verify(files, tmp_path, "stage")
    expected = truncate(tmp_path / "a.bin")
    with pytest.raises(integrity.IntegrityError) as err:
        integrity.verify(files, tmp_path, "tokenize --source web")
    assert single_line(err) == f"{expected}; rerun `python -m workflow tokenize --source web`"
    (tmp_path / "a.bin").write_bytes(b"x" * 3_000_000)
    integrity.verify(files, tmp_path, "stage")
    with pytest.raises(integrity.IntegrityError, match=re.escape(flip(tmp_path / "sub/b.txt"))):
        integrity.verify(files, tmp_path, "stage")
    (tmp_path / "sub/b.txt").unlink()
    with pytest.raises(integrity.IntegrityError, match=re.escape(f"{tmp_path / 'sub/b.txt'}: missing")):
        integrity.verify(files, tmp_path, "stage")


def test_hashed_once_per_process(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(1000))
    files = integrity.manifest(tmp_path)
    before = integrity._sha256.cache_info()
    for _ in range(3):
        integrity.verify(files, tmp_path, "stage")
    after = integrity._sha256.cache_info()
    assert (after.misses, after.hits) == (before.misses, before.hits + 3)


def test_metadata_without_checksums_is_used_with_a_warning(tmp_path, capsys):
    assert integrity.recorded({"docs": 1}, tmp_path / "old", "curate --source web") is None
    assert integrity.recorded({"docs": 1}, tmp_path / "old", "curate --source web") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'old'}: written without checksums" in err
    assert "curate --source web" in err


# --- each artifact kind, through the code that reads it --------------------------------------

def test_untouched_study_passes(study):
    assert set(read_json(paths.tokens_stats("web"))["files"]) == {"web.bin", "web.idx", "web.heldout.bin",
                                                                   "web.heldout.idx"}
    assert "part-00000.jsonl.zst" in read_json(Path(paths.curated_dir("web")) / "stats.json")["files"]
    assert "checkpoint/.metadata" in ckpt.read_meta(paths.merge_dir("avg"))["files"]
    stages.call(study, "tokenize", domain="web", workers=1)
    DataStream(study, TokenizerInfo.load(study), domain_weights(study, None))
    loaded = load_model(study, "merge-avg")
    assert heldout_metrics(study, loaded)["web"]["tokens"] > 0


@pytest.mark.parametrize("corrupt", [truncate, flip])
def test_curated_shard(study, corrupt):
    expected = corrupt(Path(paths.curated_dir("web")) / "part-00000.jsonl.zst")
    for stage in (lambda: stages.call(study, "tokenize", domain="web", workers=1), lambda: stages.call(study, "tokenizer")):
        with pytest.raises(integrity.IntegrityError) as err:
            stage()
        assert single_line(err).startswith(expected)
        assert "rerun `python -m workflow curate --source web`" in str(err.value)


def test_curate_intermediate(study):
    expected = flip(Path(paths.curate_shard_dir("web", 0)) / "docs.jsonl.zst")
    with pytest.raises(integrity.IntegrityError, match=f"^{re.escape(expected)}.*curate_shard --source web --part 00000"):
        stages.call(study, "curate_split", source="web")


@pytest.mark.parametrize("corrupt", [truncate, flip])
@pytest.mark.parametrize("ext", ["bin", "idx"])
def test_token_files(study, corrupt, ext):
    train = corrupt(f"{paths.tokens_prefix('web')}.{ext}")
    heldout = corrupt(f"{paths.tokens_prefix('web', 'heldout')}.{ext}")
    with pytest.raises(integrity.IntegrityError) as err:  # trunk / decay: before megatron opens them
        DataStream(study, TokenizerInfo.load(study), domain_weights(study, None))
    assert single_line(err).startswith(train) and "rerun `python -m workflow tokenize --domain web`" in str(err.value)
    with pytest.raises(integrity.IntegrityError, match=f"^{re.escape(train)}"):  # before the fingerprint: no retraining
        stages.call(study, "trunk")
    assert ckpt.incomplete(paths.trunk_dir("main", 3)) is None
    loaded = load_model(study, "main@3")
    with pytest.raises(integrity.IntegrityError, match=f"^{re.escape(heldout)}"):  # evaluate
        heldout_metrics(study, loaded)


@pytest.mark.parametrize("corrupt", [truncate, flip])
@pytest.mark.parametrize("name", ["checkpoint/__0_0.distcp", "checkpoint/common.pt", "checkpoint/.metadata"])
def test_checkpoint_file(study, corrupt, name):
    expected = corrupt(Path(paths.trunk_dir("main", 2)) / name)
    with pytest.raises(ckpt.CheckpointError) as err:  # trunk: continue from step-2
        stages.call(study, "trunk", trunk="main", step=3)
    assert expected in single_line(err) and "rerun `python -m workflow trunk --trunk main --step 2`" in str(err.value)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(expected)):  # merge, evaluate / export
        stages.call(study, "merge", name="avg")
    with pytest.raises(StageError, match=re.escape(expected)):
        load_model(study, "main@2")


@pytest.mark.parametrize("corrupt", [truncate, flip])
def test_merged_model(study, corrupt, tmp_path):
    expected = corrupt(Path(paths.merge_dir("avg")) / "checkpoint/__0_0.distcp")
    with pytest.raises(StageError) as err:  # evaluate and export load it this way
        load_model(study, "merge-avg")
    assert single_line(err).startswith("cannot load merge-avg: " + expected)
    assert "rerun `python -m workflow merge --name avg`" in str(err.value)


def test_cli_one_line_exit_1(study, capsys):
    flip(Path(paths.curated_dir("web")) / "heldout/part-00000.jsonl.zst")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tokenize", "--domain", "web"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    shard = f"{paths.curated_dir('web')}/heldout/part-00000.jsonl.zst"
    assert err.startswith(f"error: [tokenize] {shard}: checksum mismatch")


# --- pickles --------------------------------------------------------------------------------

class Payload:
    """Unpickling it (with a permissive unpickler) creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return io.open, (self.marker, "w")


def reseal(directory: str | Path) -> None:
    """What an attacker who rewrites a checkpoint does: record the new files' checksums in meta.json."""
    meta = ckpt.read_meta(directory)
    meta["files"] = integrity.manifest(directory, exclude=[ckpt.META])
    write_json(Path(directory) / ckpt.META, meta)


def malicious_metadata(checkpoint: Path, marker: Path) -> None:
    (checkpoint / ".metadata").write_bytes(pickle.dumps(Payload(marker)))


def malicious_common(checkpoint: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, checkpoint / "common.pt")


def malicious_object(checkpoint: Path, marker: Path) -> None:
    """Valid DCP metadata pointing one sharded object (`_extra_state`) at a pickle of the payload."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with open(checkpoint / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # our own, just written
    buffer = io.BytesIO()
    torch.save([Payload(marker)], buffer)
    (checkpoint / "evil.distcp").write_bytes(buffer.getvalue())
    index = next(i for i in metadata.storage_data
                 if isinstance(metadata.state_dict_metadata[i.fqn], BytesStorageMetadata))
    info = metadata.storage_data[index]
    info.relative_path, info.offset, info.length = "evil.distcp", 0, len(buffer.getvalue())
    with open(checkpoint / ".metadata", "wb") as f:
        pickle.dump(metadata, f)


@pytest.mark.parametrize("plant", [malicious_metadata, malicious_common, malicious_object])
def test_malicious_pickle_is_refused(study, tmp_path, plant):
    marker = tmp_path / "pwned"
    directory = Path(paths.trunk_dir("main", 2))
    plant(directory / ckpt.CKPT, marker)
    session = Session(study)
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch|missing|bytes"):  # 1: the manifest
        session.restore(directory)
    assert not marker.exists()
    reseal(directory)
    with pytest.raises(ckpt.CheckpointError, match="refusing to unpickle") as err:  # 2: the unpicklers
        session.restore(directory)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(StageError, match="refusing to unpickle"):
        load_model(study, "main@2")
    assert not marker.exists()


def test_payloads_are_live(tmp_path):
    """The payloads above do run code under the permissive readers torch DCP uses (`pickle.load`,
    `torch.load(weights_only=False)`), so the refusals are what keeps the marker away."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    buffer = io.BytesIO()
    torch.save([Payload(marker)], buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=False)
    assert marker.exists()
