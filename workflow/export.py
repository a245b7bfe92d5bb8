"""`export-hf`: any model dir as a Hugging Face `LlamaForCausalLM` directory (fp32 safetensors, config, tokenizer).

The megatron-core GPT of this project (RMSNorm, RoPE, SwiGLU, GQA, no biases, optionally tied
embeddings) is a Llama. Weights map one to one, with two fused matrices split:

    megatron-core GPTModel (local spec; TE spec names in brackets)     HF LlamaForCausalLM
    embedding.word_embeddings.weight                                   model.embed_tokens.weight
    decoder.layers.{i}.input_layernorm.weight                          model.layers.{i}.input_layernorm.weight
        [self_attention.linear_qkv.layer_norm_weight]
    decoder.layers.{i}.self_attention.linear_qkv.weight                self_attn.{q,k,v}_proj.weight
        rows grouped per query group g: [q heads of g | k_g | v_g], each head head_dim rows
    decoder.layers.{i}.self_attention.linear_proj.weight               self_attn.o_proj.weight
    decoder.layers.{i}.pre_mlp_layernorm.weight                        post_attention_layernorm.weight
        [mlp.linear_fc1.layer_norm_weight]
    decoder.layers.{i}.mlp.linear_fc1.weight = [gate; up]              mlp.gate_proj.weight, mlp.up_proj.weight
    decoder.layers.{i}.mlp.linear_fc2.weight                           mlp.down_proj.weight
    decoder.final_layernorm.weight                                     model.norm.weight
    output_layer.weight (untied only)                                  lm_head.weight

Megatron's rotary embedding is not interleaved (rotate-half), as HF Llama's, so q/k rows need no
permutation. The vocabulary keeps its training padding (config `vocab_size` >= the tokenizer's).
Norm epsilon, rotary base, head sizes come from the model's own config.
"""

from __future__ import annotations

import torch

from workflow import paths
from workflow.io import atomic_dir, write_json
from workflow.params import Params, scoped

LLAMA_ARCH = "LlamaForCausalLM"


def _norm(sd: dict, layer: str, local: str, fused: str) -> torch.Tensor:
    return sd[f"{layer}.{local}"] if f"{layer}.{local}" in sd else sd[f"{layer}.{fused}"]


def split_qkv(qkv: torch.Tensor, heads: int, groups: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's fused QKV weight `[(heads + 2 groups) head_dim, hidden]` -> (q, k, v) in HF's head order."""
    per_group = heads // groups
    grouped = qkv.reshape(groups, per_group + 2, head_dim, qkv.shape[-1])
    q = grouped[:, :per_group].reshape(heads * head_dim, -1)
    k = grouped[:, per_group].reshape(groups * head_dim, -1)
    v = grouped[:, per_group + 1].reshape(groups * head_dim, -1)
    return q, k, v


def llama_state_dict(sd: dict[str, torch.Tensor], num_layers: int, heads: int, groups: int, head_dim: int,
                     tied: bool) -> dict[str, torch.Tensor]:
    """A megatron GPTModel state dict (tensors only) as a LlamaForCausalLM one."""
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    out["lm_head.weight"] = out["model.embed_tokens.weight"] if tied else sd["output_layer.weight"]
    for i in range(num_layers):
        src, dst = f"decoder.layers.{i}", f"model.layers.{i}"
        q, k, v = split_qkv(sd[f"{src}.self_attention.linear_qkv.weight"], heads, groups, head_dim)
        gate, up = sd[f"{src}.mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({
            f"{dst}.input_layernorm.weight": _norm(sd, src, "input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
            f"{dst}.self_attn.q_proj.weight": q,
            f"{dst}.self_attn.k_proj.weight": k,
            f"{dst}.self_attn.v_proj.weight": v,
            f"{dst}.self_attn.o_proj.weight": sd[f"{src}.self_attention.linear_proj.weight"],
            f"{dst}.post_attention_layernorm.weight": _norm(sd, src, "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
            f"{dst}.mlp.gate_proj.weight": gate,
            f"{dst}.mlp.up_proj.weight": up,
            f"{dst}.mlp.down_proj.weight": sd[f"{src}.mlp.linear_fc2.weight"],
        })
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def llama_config(params: Params, config, vocab_size: int, eod: int):
    """The HF config of a megatron TransformerConfig `config` (+ the padded vocabulary and the EOD id)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=[LLAMA_ARCH], vocab_size=vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.ffn_hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_query_groups,
        head_dim=config.kv_channels, max_position_embeddings=params.model.seq_length, rms_norm_eps=config.layernorm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(params.model.rotary_base)},
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=params.model.tie_embeddings,
        bos_token_id=eod, eos_token_id=eod, pad_token_id=eod, dtype="float32")


def hf_tokenizer(params: Params):
    """The study's tokenizer as a `PreTrainedTokenizerFast` (EOD is BOS, EOS and padding; no BOS is added)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    eod = params.tokenizer.eod_token
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(paths.tokenizer_file()), bos_token=eod,
                                   eos_token=eod, pad_token=eod, model_max_length=params.model.seq_length,
                                   additional_special_tokens=list(params.tokenizer.special_tokens) or None)


def run(params: Params, model_id: str, out: str) -> None:
    """Write `model_id` as a LlamaForCausalLM directory at `out` (atomically)."""
    from transformers import LlamaForCausalLM

    from workflow.evaluate import lineage
    from workflow.evaluate.model import load_model

    params = scoped(params, model_id)
    loaded = load_model(params, model_id)
    config = loaded.model.config
    state = {k: v for k, v in loaded.model.state_dict().items() if isinstance(v, torch.Tensor)}
    weights = llama_state_dict(state, config.num_layers, config.num_attention_heads, config.num_query_groups,
                               config.kv_channels, params.model.tie_embeddings)
    hf_config = llama_config(params, config, loaded.vocab_size, loaded.tokenizer.eod)
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_config)
    model.load_state_dict(weights, strict=True, assign=True)
    if params.model.tie_embeddings:
        model.tie_weights()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(params).save_pretrained(tmp)
        write_json(tmp / "arbor.json", {"model": model_id, "lineage": lineage(model_id, loaded.meta)})
    n = sum(p.numel() for p in model.parameters())
    print(f"[export-hf] {model_id} → {out}/ ({LLAMA_ARCH}, {n:,} parameters, vocab {loaded.vocab_size}, fp32 safetensors)")
