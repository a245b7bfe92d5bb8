"""Evaluation runs FP8-safe shapes on every backend: each forward's sequences are padded on the right to a
multiple of 16 tokens (held-out windows, log-likelihood batches, greedy generation), and the padding changes
nothing at the real positions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from workflow import stages
from workflow.evaluate.harness import ArborLM
from workflow.evaluate.heldout import heldout_metrics
from workflow.evaluate.model import load_model


@pytest.fixture
def loaded(train_study):
    params = train_study(checkpoints=[4])
    stages.call(params, "trunk", trunk="main", step=4)
    return params, load_model(params, "main@4")


def test_every_eval_forward_is_a_multiple_of_16_tokens(loaded):
    params, model = loaded
    shapes: list[tuple[int, int]] = []
    model.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    lm = ArborLM(model, batch_size=3, max_length=params.model.seq_length)
    heldout_metrics(params, model)
    lm._loglikelihood_tokens([((None, None), [5, 6, 7], [8, 9]), ((None, None), list(range(20, 41)), [3])])
    lm.generate_until([SimpleNamespace(args=("the cat", {"until": ["\n"], "max_gen_toks": 3}))])
    assert len(shapes) >= 5 and {s[1] % 16 for s in shapes} == {0}, shapes
    assert {s[1] for s in shapes} > {params.model.seq_length}  # short inputs were padded, not only full windows


def test_padding_leaves_the_real_positions_alone(loaded):
    _, model = loaded
    tokens = torch.randint(0, model.tokenizer.vocab_size, (2, 21))
    positions = torch.arange(21).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        unpadded = model.model(tokens, positions, None).float()
    padded = model.logits(tokens)
    assert padded.shape == unpadded.shape
    torch.testing.assert_close(padded, unpadded, rtol=1e-5, atol=1e-5)
    at = torch.tensor([[0, 20, 7], [13, 2, 20]])  # logits at chosen positions only: the same values
    torch.testing.assert_close(model.logits(tokens, at), unpadded.gather(1, at[..., None].expand(-1, -1, unpadded.size(-1))),
                               rtol=1e-5, atol=1e-5)
    labels = torch.randint(0, model.tokenizer.vocab_size, (2, 21))
    with torch.no_grad():
        losses = model.model(tokens, positions, None, labels=labels).float()
    torch.testing.assert_close(model.token_losses(tokens, labels), losses, rtol=1e-5, atol=1e-5)
