"""The GPT's shapes from params.yaml, without torch: SwiGLU width, padded vocabulary, parameter and FLOP counts."""

from __future__ import annotations

from workflow.params import Model

VOCAB_MULTIPLE = 128
NORM_EPS = 1e-5  # RMSNorm epsilon (megatron-core's default, set explicitly: the HF config states it)


def padded_vocab_size(vocab_size: int, tp: int = 1) -> int:
    """The tokenizer's vocabulary rounded up to a multiple of 128, the same for every TP size (so
    checkpoints reshard); each TP rank holds an equal slice of it."""
    padded = -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if padded % tp:
        raise ValueError(f"model.parallel.tp = {tp} does not divide the padded vocabulary ({padded}); use a power of two")
    return padded


def ffn_size(model: Model) -> int:
    """SwiGLU inner size: params value, or 8/3 * hidden rounded up to a multiple of 64."""
    return model.ffn_hidden_size or -(-(8 * model.hidden_size // 3) // 64) * 64


def parameters(model: Model, vocab_size: int) -> int:
    """Parameters of the GPT arbor builds (RMSNorm, SwiGLU, GQA, no biases) over the padded vocabulary."""
    h, layers = model.hidden_size, model.num_layers
    kv = h // model.num_attention_heads * (model.num_query_groups or model.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * ffn_size(model) + 2 * h   # q, out, k, v; SwiGLU; two norms
    return layers * per_layer + h + padded_vocab_size(vocab_size) * h * (1 if model.tie_embeddings else 2)


def flops_per_token(model: Model, vocab_size: int, attention: bool = True) -> float:
    """Training FLOPs per token: 3x the forward matmuls (projections, SwiGLU, logits) plus, with `attention`,
    the score and value products counted in full as in the PaLM / Megatron MFU convention."""
    h, s, layers = model.hidden_size, model.seq_length, model.num_layers
    kv = h // model.num_attention_heads * (model.num_query_groups or model.num_attention_heads)
    per_layer = 2 * h * (h + 2 * kv) + 2 * h * h + 2 * 3 * h * ffn_size(model) + (4 * s * h if attention else 0)
    return 3 * (layers * per_layer + 2 * h * padded_vocab_size(vocab_size))
