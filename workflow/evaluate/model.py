"""A model dir loaded for inference: the training code's megatron `GPTModel`, one process (TP = PP = 1,
any training layout reshards on load), eval mode."""

from __future__ import annotations

import dataclasses

import torch

from workflow import paths
from workflow.errors import StageError
from workflow.params import Params
from workflow.train import checkpoint as ckpt
from workflow.train.backend import Backend
from workflow.train.data import TokenizerInfo
from workflow.train.loop import setup
from workflow.train.model import build_model


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
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """fp32 logits `[b, s, vocab_size]` of token ids `[b, s]` (causal: position i sees tokens <= i)."""
        tokens = tokens.to(self.backend.device)
        positions = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
        with self.backend.autocast():
            return self.model(tokens, positions, None).float()


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
