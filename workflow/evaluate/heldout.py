"""Held-out loss and bits-per-byte of one model, per domain and overall.

Each domain's held-out documents (EOD-separated, in file order) are cut into consecutive windows of
`seq_length` predicted tokens (the last window may be shorter and is masked), at most
`eval.max_sequences` windows, evaluated in batches of `eval.batch_size` without gradients.

bpb = total nats / ln 2 / bytes covered, bytes covered = tokens evaluated x (held-out bytes / held-out
tokens) of the domain (from `<domain>.stats.json`); "all" pools nats, tokens and bytes of every domain.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from workflow import paths
from workflow.evaluate.model import LoadedModel
from workflow.io import read_json
from workflow.params import Params
from workflow.train.data import verify_tokens


def heldout_windows(prefix: str, seq_length: int, max_sequences: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, labels, mask), each `[n, seq_length]`, from the start of a held-out token file."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    need = None if max_sequences is None else max_sequences * seq_length + 1
    parts, have = [], 0
    for i in range(len(dataset)):
        parts.append(np.asarray(dataset[i], dtype=np.int64))
        have += len(parts[-1])
        if need is not None and have >= need:
            break
    stream = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.int64)
    if need is not None:
        stream = stream[:need]
    n = max(0, -(-(len(stream) - 1) // seq_length))
    tokens = torch.zeros(n, seq_length, dtype=torch.int64)
    labels = torch.zeros(n, seq_length, dtype=torch.int64)
    mask = torch.zeros(n, seq_length, dtype=torch.bool)
    for w in range(n):
        x = stream[w * seq_length: w * seq_length + seq_length + 1]
        tokens[w, : len(x) - 1], labels[w, : len(x) - 1], mask[w, : len(x) - 1] = x[:-1], x[1:], True
    return tokens, labels, mask


def summary(nats: float, tokens: int, nbytes: float) -> dict:
    if tokens == 0:
        return {"loss": None, "bpb": None, "tokens": 0}
    return {"loss": nats / tokens, "bpb": nats / math.log(2) / nbytes, "tokens": tokens}


def heldout_metrics(params: Params, loaded: LoadedModel) -> dict[str, dict]:
    """`{"<domain>": {"loss", "bpb", "tokens"}, ..., "all": {...}}`."""
    out, pooled = {}, [0.0, 0, 0.0]
    device = loaded.backend.device
    for domain in params.domains():
        verify_tokens(params, domain, "heldout")
        tokens, labels, mask = heldout_windows(paths.tokens_prefix(domain, "heldout"), params.model.seq_length,
                                               params.eval.max_sequences)
        nats = 0.0
        with torch.no_grad():
            for b in range(0, len(tokens), params.eval.batch_size):
                sl = slice(b, b + params.eval.batch_size)
                losses = loaded.token_losses(tokens[sl], labels[sl])
                nats += float(losses.double()[mask[sl].to(device)].sum())
        n = int(mask.sum())
        split = read_json(paths.tokens_stats(domain))["heldout"]
        nbytes = n * split["bytes"] / split["tokens"] if split["tokens"] else 0.0
        out[domain] = summary(nats, n, nbytes)
        pooled = [pooled[0] + nats, pooled[1] + n, pooled[2] + nbytes]
    out["all"] = summary(*pooled)
    return out
