"""Unit-test fixtures shared across stages.

Training fixtures (prefixed `train_`): a tiny study in `tmp_path` (cwd) with a trained byte-level BPE
tokenizer and megatron indexed token files for two domains, so train / merge / evaluate tests run
without the upstream stages.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

TRAIN_DOMAINS = ("prose", "code")
TRAIN_EOD = "<|endoftext|>"


def _train_docs(domain: str, n: int, seed: int) -> list[str]:
    rng = random.Random(f"{domain}/{seed}")
    if domain == "code":
        names = ["x", "y", "total", "count", "items", "value", "result"]
        return ["\n".join(f"def f{i}_{j}({rng.choice(names)}):\n    return {rng.choice(names)} + {rng.randint(0, 99)}"
                          for j in range(rng.randint(2, 6))) for i in range(n)]
    words = "the a cat dog sat on mat ran far and then slept under tree by river in morning light".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + "." for _ in range(n)]


def train_params_dict(**trunk) -> dict:
    """A tiny, fast study over the `train_` fixture data (override trunk keys via kwargs; decays from
    steps that are not checkpoints, and merges of them, are dropped)."""
    raw = {
        "sources": {d: {"paths": [f"data/{d}/*.jsonl"], "domain": d} for d in TRAIN_DOMAINS},
        "tokenizer": {"vocab_size": 300, "eod_token": TRAIN_EOD},
        "model": {"backend": "cpu", "num_layers": 1, "hidden_size": 32, "num_attention_heads": 4,
                  "num_query_groups": 2, "ffn_hidden_size": 64, "seq_length": 32},
        "trunk": {"checkpoints": [4, 8], "seed": 7, "lr": 3e-3, "warmup_steps": 2, "global_batch_size": 4,
                  "micro_batch_size": 2, "save_interval": 2, **trunk},
        "decays": {"lin": {"from": f"main@{4}", "steps": 4, "shape": "linear", "final_lr": 0.0},
                   "cos": {"from": f"main@{8}", "steps": 3, "shape": "cosine", "final_lr": 1e-4,
                           "mixture": {"prose": 1.0, "code": 3.0}}},
        "merges": {"both": {"models": ["decay-lin", "decay-cos"]}},
        "eval": {"batch_size": 3, "max_sequences": 5},
    }
    steps = raw["trunk"]["checkpoints"]
    raw["decays"] = {b: d for b, d in raw["decays"].items() if int(d["from"].split("@")[1]) in steps}
    if len(raw["decays"]) < 2:
        raw["merges"] = {}
    return raw


def write_train_inputs(root: Path, seed: int = 0) -> None:
    """Tokenizer + `<domain>{,.heldout}.{bin,idx}` + stats under `root/artifacts` (workflow.paths layout)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    docs = {d: _train_docs(d, 60, seed) for d in TRAIN_DOMAINS}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=2, special_tokens=[TRAIN_EOD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([t for ds in docs.values() for t in ds], trainer)
    (root / "artifacts/tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "artifacts/tokenizer/tokenizer.json"))
    eod = tok.token_to_id(TRAIN_EOD)
    (root / "artifacts/tokens").mkdir(parents=True, exist_ok=True)
    import json

    import torch

    for domain, texts in docs.items():
        stats = {"domain": domain, "source": domain, "vocab_size": tok.get_vocab_size(), "dtype": "uint16"}
        for split, part in (("train", texts[:50]), ("heldout", texts[50:])):
            prefix = root / "artifacts/tokens" / (domain if split == "train" else f"{domain}.heldout")
            builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
            n_tokens = 0
            for text in part:
                ids = tok.encode(text).ids + [eod]
                n_tokens += len(ids)
                builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
            builder.finalize(f"{prefix}.idx")
            stats[split] = {"documents": len(part), "tokens": n_tokens, "bytes": sum(len(t.encode()) for t in part)}
        (root / f"artifacts/tokens/{domain}.stats.json").write_text(json.dumps(stats))


@pytest.fixture
def train_study(tmp_path, monkeypatch):
    """cwd = a tmp dir holding tiny tokenizer/token artifacts; returns a factory `(**trunk) -> Params`."""
    from workflow.params import parse_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARBOR_THREADS", "1")
    write_train_inputs(tmp_path)

    def make(**trunk):
        return parse_params(train_params_dict(**trunk))

    return make


@pytest.fixture
def train_weights():
    """`(directory, params) -> {name: tensor}`: the model weights stored in a model dir."""
    def load(directory, params):
        from workflow.train import checkpoint as ckpt
        from workflow.train.loop import setup
        from workflow.train.model import build_model

        backend, tokenizer = setup(params)
        model = build_model(params.model, backend, tokenizer.vocab_size)
        ckpt.load(directory, model)
        return {k: v.detach().clone() for k, v in model.state_dict().items()
                if hasattr(v, "is_floating_point") and v.is_floating_point()}

    return load
