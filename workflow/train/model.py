"""The GPT: megatron-core `GPTModel` built from `params.model` (RMSNorm, RoPE, SwiGLU, GQA, no biases)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workflow.params import Model
from workflow.train.backend import Backend

VOCAB_MULTIPLE = 128


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """Round the tokenizer's vocabulary up to a multiple of 128 * tp (megatron's make_vocab_size_divisible_by)."""
    multiple = VOCAB_MULTIPLE * tp
    return -(-vocab_size // multiple) * multiple


def ffn_size(model: Model) -> int:
    """SwiGLU inner size: params value, or 8/3 * hidden rounded up to a multiple of 64."""
    return model.ffn_hidden_size or -(-(8 * model.hidden_size // 3) // 64) * 64


def transformer_config(model: Model, backend: Backend):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups or model.num_attention_heads,
        ffn_hidden_size=ffn_size(model),
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=model.parallel.tp,
        pipeline_model_parallel_size=model.parallel.pp,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        **backend.config_kwargs,
    )


def build_model(model: Model, backend: Backend, vocab_size: int) -> torch.nn.Module:
    """A fresh GPTModel on the backend's device (initialised from torch's current RNG state)."""
    from megatron.core.models.gpt import GPTModel

    gpt = GPTModel(
        config=transformer_config(model, backend),
        transformer_layer_spec=backend.layer_spec(),
        vocab_size=padded_vocab_size(vocab_size, model.parallel.tp),
        max_sequence_length=model.seq_length,
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model.rotary_base,
    )
    return gpt.to(backend.device)


def token_losses(gpt: torch.nn.Module, backend: Backend, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy in nats, shape [b, s]."""
    positions = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
    with backend.autocast():
        return gpt(tokens, positions, None, labels=labels).float()
