"""The GPT: megatron-core `GPTModel` built from `params.model` (RMSNorm, RoPE, SwiGLU, GQA, no biases).

Tensor/pipeline sizes come from megatron's `parallel_state` (the process layout), not from params, so
one checkpoint loads under any layout: a TP=2 or PP=2 training run's weights load into a TP=PP=1 evaluation.
With pipeline parallelism each process builds its stage (embedding on the first, final norm and output
layer on the last, a contiguous share of the layers on each), initialised as the one-stage model would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from workflow.params import Model
from workflow.shapes import NORM_EPS, ffn_size, padded_vocab_size

if TYPE_CHECKING:  # annotations only: backend.py imports this module, not the other way round
    from workflow.train.backend import Backend

def transformer_config(model: Model, config_kwargs: dict, tp: int = 1, pp: int = 1):
    """megatron's TransformerConfig of `model` with a backend's precision settings (`Backend.config_kwargs`).

    `calculate_per_token_loss`: the loop's loss function already divides by the global batch's tokens, so
    megatron's schedules must not rescale it by the micro-batch count. Activations travel between pipeline
    stages in the parameters' dtype."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups or model.num_attention_heads,
        ffn_hidden_size=ffn_size(model),
        normalization="RMSNorm",
        layernorm_epsilon=NORM_EPS,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        calculate_per_token_loss=True,
        pipeline_dtype=config_kwargs["params_dtype"],
        **config_kwargs,
    )


def build_model(model: Model, backend: Backend, vocab_size: int) -> torch.nn.Module:
    """A fresh GPTModel (this process's pipeline stage) on the backend's device for the current process
    layout, initialised from torch's current RNG state; with CPU initialisation the weights do not depend
    on TP or PP."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    config = transformer_config(model, backend.config_kwargs, tp, pp)
    first, last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
    if not first:
        _skip_earlier_stages(config, backend, padded_vocab_size(vocab_size, tp), model.seq_length)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=backend.layer_spec(),
        vocab_size=padded_vocab_size(vocab_size, tp),
        max_sequence_length=model.seq_length,
        pre_process=first,
        post_process=last,
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model.rotary_base,
    )
    return gpt.to(backend.device)


def _skip_earlier_stages(config, backend: Backend, vocab_size: int, seq_length: int) -> None:
    """Advance the RNGs past the initialisation of the embedding and the layers of the stages before this
    one, by building each (one at a time) and dropping it: every stage then draws the weights the
    one-stage model draws for its layers (and no two stages start from the same draws)."""
    from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    LanguageModelEmbedding(config=config, vocab_size=vocab_size, max_sequence_length=seq_length,
                           position_embedding_type="rope")
    spec = backend.layer_spec()
    for number in range(1, get_transformer_layer_offset(config) + 1):
        build_module(spec, config=config, layer_number=number)


def token_losses(gpt: torch.nn.Module, backend: Backend, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy in nats, shape [b, s]."""
    positions = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0).expand_as(tokens)
    with backend.autocast():
        return gpt(tokens, positions, None, labels=labels).float()
