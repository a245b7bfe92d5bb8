"""A model dir loaded for inference: the training code's megatron `GPTModel`, one process (TP = PP = 1,
any training layout reshards on load), eval mode.

Every forward pads its sequences on the right to a multiple of 16 tokens (`pad_length`), on every backend:
Transformer Engine's FP8 GEMMs refuse token counts that are not multiples of 8 (and `check` makes sure the
padded length never exceeds `model.seq_length`, `backend.fp8_shape_problems`). Attention is causal, so the
padding changes nothing at the real positions; it is cut off again.
"""

from __future__ import annotations

import dataclasses

import torch

from workflow import paths
from workflow.errors import StageError
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train.backend import FP8_TOKEN_MULTIPLE, Backend
from workflow.train.data import TokenizerInfo
from workflow.train.loop import setup
from workflow.train.model import build_model, token_losses


def pad_length(n: int) -> int:
    """`n` tokens rounded up to a multiple of 16 (FP8-safe GEMM shapes for any batch size)."""
    return -(-n // FP8_TOKEN_MULTIPLE) * FP8_TOKEN_MULTIPLE


def pad_right(ids: torch.Tensor, value: int) -> torch.Tensor:
    """`ids` `[b, s]` padded with `value` to `[b, pad_length(s)]`."""
    extra = pad_length(ids.size(1)) - ids.size(1)
    return torch.nn.functional.pad(ids, (0, extra), value=value) if extra else ids


@dataclasses.dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    backend: Backend
    tokenizer: TokenizerInfo
    meta: dict  # the model dir's meta.json

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (the padded vocabulary)."""
        return self.model.embedding.word_embeddings.weight.shape[0]

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits `[b, s, vocab_size]` of token ids `[b, s]` (causal: position i sees tokens <= i).

        With `at` (`[b, k]` positions per row) only those: `[b, k, vocab_size]`, and the output layer (the
        largest GEMM of a small model) runs on `b * k` hidden states instead of `b * s`."""
        n = tokens.size(1)
        ids = pad_right(tokens.to(self.backend.device), self.tokenizer.eod)
        positions = torch.arange(ids.size(1), device=ids.device).unsqueeze(0).expand_as(ids)
        hook = None
        if at is not None:
            index = at.to(ids.device).t()[..., None]  # [k, b, 1]: the output layer takes [s, b, hidden]

            def pick(_module, args, kwargs):
                hidden = args[0]
                return (hidden.gather(0, index.expand(-1, -1, hidden.size(-1))), *args[1:]), kwargs

            hook = self.model.output_layer.register_forward_pre_hook(pick, with_kwargs=True)
        try:
            with self.backend.autocast():
                out = self.model(ids, positions, None).float()
        finally:
            if hook is not None:
                hook.remove()
        return out if at is not None else out[:, :n]

    @torch.no_grad()
    def token_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token cross entropy `[b, s]` in nats of `labels` after `tokens`."""
        n = tokens.size(1)
        device, eod = self.backend.device, self.tokenizer.eod
        losses = token_losses(self.model, self.backend, pad_right(tokens.to(device), eod), pad_right(labels.to(device), eod))
        return losses[:, :n]


def load_model(params: Params, model_id: str) -> LoadedModel:
    """Load `model_id`'s weights into a fresh model in eval mode; a clear error when the dir is not complete."""
    directory = paths.model_dir(model_id)
    problem = ckpt.incomplete(directory)
    if problem:
        raise StageError(f"cannot load {model_id}: {problem}; build it first")
    backend, tokenizer = setup(params)
    model = build_model(params.model, backend, tokenizer.vocab_size)
    ckpt.load(directory, model)
    model.eval()
    return LoadedModel(model_id, model, backend, tokenizer, ckpt.read_meta(directory))
