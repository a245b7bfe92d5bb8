"""Training data: a horizon-independent, resumable stream of token sequences over the domain mixture.

Sample `i` of a stream is a pure function of (seed, mixture, token files, offsets, i):

* each domain is an endless chain of epochs; epoch `e` is a megatron `GPTDataset` covering the domain
  once (built by `BlendedMegatronDatasetBuilder` with `size=None`), shuffled with a seed derived from
  (seed, domain, e). Megatron's multi-epoch index would reshuffle everything when the requested
  number of samples grows, so the number of steps never enters the data order.
* domains are interleaved with megatron's `build_blending_indices` (the algorithm `BlendedDataset`
  uses), which is prefix-stable: the first n choices do not depend on how many are requested.

A stream's state is `{"weights", "offsets", "position"}`; `offsets` are samples already taken from
each domain before the stream started (a decay with its own mixture continues every domain where the
trunk stopped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import logging
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from workflow import integrity, paths
from workflow.io import read_json
from workflow.params import Params


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What megatron's datasets need from a tokenizer (`eod`, `pad`, `vocab_size`, `unique_identifiers`)."""

    eod: int
    vocab_size: int
    pad: int = -1  # never a real token id: no label is ever masked as padding

    @property
    def unique_identifiers(self) -> dict:
        return {"class": "arbor", "eod": self.eod, "vocab_size": self.vocab_size}

    @classmethod
    def load(cls, params: Params) -> "TokenizerInfo":
        from tokenizers import Tokenizer

        path = paths.tokenizer_file()
        try:
            tok = Tokenizer.from_file(path)
        except Exception as err:
            raise FileNotFoundError(f"{path}: cannot load the tokenizer ({err}); run the tokenizer stage first") from None
        eod = tok.token_to_id(params.tokenizer.eod_token)
        if eod is None:
            raise ValueError(f"{path}: has no token {params.tokenizer.eod_token!r} (tokenizer.eod_token)")
        return cls(eod=eod, vocab_size=tok.get_vocab_size())


def verify_tokens(params: Params, domain: str, split: str = "train") -> None:
    """Check a split's `.bin/.idx` against the checksums in `<domain>.stats.json` before megatron opens them."""
    data = params.trunk.data if split == "train" else None  # a data variant replaces the train split only
    stats_path = Path(paths.tokens_stats(domain, data))
    name = Path(paths.tokens_prefix(domain, split, data)).name
    rerun = f"tokenize --domain {domain}" if data is None else f"tokenize_selected --selection {data} --domain {domain}"
    integrity.verify_meta(read_json(stats_path), stats_path.parent, rerun, names=[f"{name}.bin", f"{name}.idx"])


def domain_weights(params: Params, mixture: dict[str, float] | None) -> dict[str, float]:
    """Normalised sampling weights per domain; `None` = proportional to training tokens."""
    if mixture is None:
        data = params.trunk.data
        mixture = {d: float(read_json(paths.tokens_stats(d, data))["train"]["tokens"]) for d in params.domains()}
    weights = {d: float(mixture[d]) for d in params.domains() if mixture.get(d, 0) > 0}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the data mixture has no domain with a positive weight (no training tokens?)")
    return {d: w / total for d, w in weights.items()}


def _epoch_seed(seed: int, domain: str, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{domain}/{epoch}".encode()).digest()[:4], "little")


def _epoch(prefix: str, seed: int, seq_length: int, tokenizer: TokenizerInfo):
    """One shuffled pass over a domain's training documents (a megatron GPTDataset), cached per file version."""
    stat = os.stat(f"{prefix}.idx")
    return _cached_epoch(os.path.abspath(prefix), (stat.st_mtime_ns, stat.st_size), seed, seq_length, tokenizer)


@lru_cache(maxsize=16)
def _cached_epoch(prefix: str, _stamp: tuple, seed: int, seq_length: int, tokenizer: TokenizerInfo):
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import Split

    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=([prefix], None), split="1,0,0",
        tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache="",  # build the index in memory: never write next to another stage's output
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("megatron.core.datasets").level
        logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)
        try:
            # What `BlendedMegatronDatasetBuilder` builds for one prefix, split "1,0,0" and no size, minus its
            # rank-0-first barrier: with the index in memory no rank waits for a cache, and a barrier here
            # would hang data-parallel replicas that open a domain's next epoch at different steps.
            documents = GPTDataset.build_low_level_dataset(prefix, config)
            indices = np.arange(GPTDataset.numel_low_level_dataset(documents), dtype=np.int32)
            dataset = GPTDataset(documents, prefix, indices, None, Split.train, config)
        finally:
            logging.getLogger("megatron.core.datasets").setLevel(previous)
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"{prefix}: fewer than seq_length+1 = {seq_length + 1} training tokens; "
                         "add data or lower model.seq_length")
    return dataset


class DataStream:
    """An endless, deterministic sequence of `[seq_length + 1]`-token samples over a domain mixture."""

    def __init__(self, params: Params, tokenizer: TokenizerInfo, weights: dict[str, float],
                 offsets: dict[str, int] | None = None) -> None:
        self.params, self.tokenizer = params, tokenizer
        self.domains = sorted(weights)  # canonical order: JSON round trips must not change the stream
        for domain in self.domains:
            verify_tokens(params, domain)
        self.weights = weights
        self.offsets = {d: int((offsets or {}).get(d, 0)) for d in self.domains}
        self._blend = np.zeros(0, dtype=np.int16)
        self._blend_sample = np.zeros(0, dtype=np.int64)

    def _dataset(self, domain: str, epoch: int):
        return _epoch(paths.tokens_prefix(domain, data=self.params.trunk.data), _epoch_seed(self.params.trunk.seed, domain, epoch),
                      self.params.model.seq_length, self.tokenizer)

    def _ensure(self, size: int) -> None:
        if size <= len(self._blend):
            return
        from megatron.core.datasets import helpers

        size = max(size, 2 * len(self._blend), 1024)
        index, sample = np.zeros(size, dtype=np.int16), np.zeros(size, dtype=np.int64)
        weights = np.array([self.weights[d] for d in self.domains], dtype=np.float64)
        helpers.build_blending_indices(index, sample, weights, len(self.domains), size, False)
        self._blend, self._blend_sample = index, sample

    def sample(self, i: int) -> torch.Tensor:
        """Tokens of stream sample `i` (length seq_length + 1)."""
        self._ensure(i + 1)
        domain = self.domains[self._blend[i]]
        j = self.offsets[domain] + int(self._blend_sample[i])
        epoch_len = len(self._dataset(domain, 0))
        item = self._dataset(domain, j // epoch_len)[j % epoch_len]
        return torch.cat([item["tokens"], item["labels"][-1:]])

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, labels), each `[count, seq_length]`, for samples start .. start+count-1."""
        seqs = torch.stack([self.sample(i) for i in range(start, start + count)])
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def domain_positions(self, position: int) -> dict[str, int]:
        """Samples taken from each domain (including offsets) once `position` stream samples are used."""
        self._ensure(position + 1)
        counts = np.bincount(self._blend[:position], minlength=len(self.domains))
        return {d: self.offsets[d] + int(counts[k]) for k, d in enumerate(self.domains)}

    def state(self, position: int) -> dict:
        return {"weights": self.weights, "offsets": self.offsets, "position": position,
                "domain_positions": self.domain_positions(position)}

    @classmethod
    def from_state(cls, params: Params, tokenizer: TokenizerInfo, state: dict) -> "DataStream":
        return cls(params, tokenizer, dict(state["weights"]), dict(state["offsets"]))
