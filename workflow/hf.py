"""The Hugging Face Llama format, both ways: `export-hf` writes it (`to_llama`, `llama_config`), a trunk's
`from_hf` starts from it (`check`, then `load_into`). One weight table and one config table serve both.

The megatron-core GPT of this project (RMSNorm, RoPE, SwiGLU, GQA, no biases, optionally tied
embeddings) is a Llama. Weights map one to one, with two fused matrices:

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
permutation. Export keeps the vocabulary's training padding (config `vocab_size` >= the tokenizer's).

Import reads config.json, tokenizer.json and safetensors only (one file, or the shards an index names; never
a pickle) and refuses, in one line, what is not this GPT: another architecture, biases, rope scaling, another
activation or norm epsilon, a config that differs from the trunk's model keys (each named), a tensor of
another shape (named), a tokenizer that is not the study's. Vocabulary rows are copied up to the study's
padded size (`shapes.padded_vocab_size`): missing rows are zeros, rows past it (beyond the tokenizer) dropped.
Each process copies its own part (pipeline stage, tensor-parallel shard) into the model it built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workflow import integrity
from workflow.errors import StageError
from workflow.params import Model
from workflow.shapes import NORM_EPS, ffn_size, padded_vocab_size

if TYPE_CHECKING:
    import torch

LLAMA_ARCH = "LlamaForCausalLM"
CONFIG, TOKENIZER, WEIGHTS, INDEX = "config.json", "tokenizer.json", "model.safetensors", "model.safetensors.index.json"

# megatron name -> the HF names it holds (several: stacked along dim 0; q, k, v per query group, see split_qkv)
TOP = {"embedding.word_embeddings.weight": ("model.embed_tokens.weight",),
       "decoder.final_layernorm.weight": ("model.norm.weight",),
       "output_layer.weight": ("lm_head.weight",)}
LAYER = {"input_layernorm.weight": ("input_layernorm.weight",),
         "self_attention.linear_qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
         "self_attention.linear_proj.weight": ("self_attn.o_proj.weight",),
         "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight",),
         "mlp.linear_fc1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
         "mlp.linear_fc2.weight": ("mlp.down_proj.weight",)}
TE_NAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",  # norms fused into TE linears
            "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")

# HF config key -> the `model` key it is written from (export) and must equal (import)
SHAPE_KEYS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size", "intermediate_size": "ffn_hidden_size",
              "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_query_groups",
              "rope_theta": "rotary_base", "tie_word_embeddings": "tie_embeddings"}
FIXED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rms_norm_eps": NORM_EPS}
# transformers' LlamaConfig defaults: what a config.json that omits a key means
LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                  "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False}
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # a buffer older exports saved; recomputed, never read
TOKENIZER_PARTS = ("model", "normalizer", "pre_tokenizer", "added_tokens")  # what maps text to ids, and ids to tokens


class HfImportError(StageError):
    """A Hugging Face directory that cannot start this trunk; the message says what differs."""


@dataclass(frozen=True)
class Shape:
    """What the weight mapping needs to know of the GPT."""
    layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    ffn: int
    tied: bool

    @classmethod
    def of(cls, model: Model) -> "Shape":
        heads = model.num_attention_heads
        return cls(layers=model.num_layers, hidden=model.hidden_size, heads=heads,
                   groups=model.num_query_groups or heads, head_dim=model.hidden_size // heads, ffn=ffn_size(model),
                   tied=model.tie_embeddings)


# --- weights, both ways -------------------------------------------------------------------------

def hf_names(name: str, tied: bool) -> tuple[str, ...]:
    """The HF weights one megatron weight (its global name, local-spec naming) holds."""
    if name == "output_layer.weight" and tied:
        return TOP["embedding.word_embeddings.weight"]
    if name in TOP:
        return TOP[name]
    layer, local = LAYER_KEY.match(name).groups()
    return tuple(f"model.layers.{layer}.{n}" for n in LAYER[local])


def weight_names(shape: Shape) -> list[str]:
    """Every weight of the one-stage GPT (local-spec names)."""
    top = [n for n in TOP if n != "output_layer.weight" or not shape.tied]
    return top + [f"decoder.layers.{i}.{n}" for i in range(shape.layers) for n in LAYER]


def split_qkv(qkv: torch.Tensor, heads: int, groups: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's fused QKV weight `[(heads + 2 groups) head_dim, hidden]` -> (q, k, v) in HF's head order."""
    per_group = heads // groups
    grouped = qkv.reshape(groups, per_group + 2, head_dim, qkv.shape[-1])
    q = grouped[:, :per_group].reshape(heads * head_dim, -1)
    k = grouped[:, per_group].reshape(groups * head_dim, -1)
    v = grouped[:, per_group + 1].reshape(groups * head_dim, -1)
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int, head_dim: int) -> torch.Tensor:
    """The inverse of `split_qkv`."""
    import torch

    per_group, hidden = heads // groups, q.shape[-1]
    grouped = torch.cat([q.reshape(groups, per_group, head_dim, hidden), k.reshape(groups, 1, head_dim, hidden),
                         v.reshape(groups, 1, head_dim, hidden)], dim=1)
    return grouped.reshape(-1, hidden)


def split(name: str, tensor: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, ...]:
    """One megatron weight as its HF weights (`hf_names` order)."""
    if name.endswith("linear_qkv.weight"):
        return split_qkv(tensor, shape.heads, shape.groups, shape.head_dim)
    if name.endswith("linear_fc1.weight"):
        return tuple(tensor.chunk(2, dim=0))
    return (tensor,)


def fuse(name: str, parts: list[torch.Tensor], shape: Shape) -> torch.Tensor:
    """HF weights (`hf_names` order) as one megatron weight."""
    import torch

    if name.endswith("linear_qkv.weight"):
        return fuse_qkv(*parts, shape.heads, shape.groups, shape.head_dim)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def canonical(name: str) -> str:
    """A TE-spec layer norm name as the local spec's."""
    m = LAYER_KEY.match(name)
    if m:
        for local, te in TE_NAMES.items():
            if m[2] == te:
                return f"decoder.layers.{m[1]}.{local}"
    return name


def to_llama(sd: dict[str, torch.Tensor], shape: Shape) -> dict[str, torch.Tensor]:
    """A megatron GPTModel state dict (tensors; local or TE names) as a LlamaForCausalLM one, fp32."""
    import torch

    by_name = {canonical(k): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for name in weight_names(shape):
        out.update(zip(hf_names(name, shape.tied), split(name, by_name[name], shape)))
    if shape.tied:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


# --- config, both ways ----------------------------------------------------------------------------

def shape_config(model: Model) -> dict[str, Any]:
    """The HF config values `model` determines (SHAPE_KEYS, plus `head_dim`, which arbor derives)."""
    s = Shape.of(model)
    return {"num_hidden_layers": s.layers, "hidden_size": s.hidden, "intermediate_size": s.ffn,
            "num_attention_heads": s.heads, "num_key_value_heads": s.groups, "rope_theta": float(model.rotary_base),
            "tie_word_embeddings": s.tied, "head_dim": s.head_dim}


def llama_config(model: Model, vocab_size: int, eod: int):
    """The `LlamaConfig` of `model` over `vocab_size` rows (the padded vocabulary), EOD as BOS, EOS and padding."""
    from transformers import LlamaConfig

    values = shape_config(model)
    theta = values.pop("rope_theta")
    return LlamaConfig(architectures=[LLAMA_ARCH], vocab_size=vocab_size, max_position_embeddings=model.seq_length,
                       rope_parameters={"rope_type": "default", "rope_theta": theta}, **values, **FIXED,
                       bos_token_id=eod, eos_token_id=eod, pad_token_id=eod, dtype="float32")


def _theirs(cfg: dict, key: str) -> Any:
    """A config.json value with transformers' defaults (rope_theta also under `rope_parameters`)."""
    if key == "rope_theta":
        return (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", LLAMA_DEFAULTS[key]))
    if key == "num_key_value_heads":
        return cfg.get(key) or _theirs(cfg, "num_attention_heads")
    if key == "head_dim":
        return cfg.get(key) or _theirs(cfg, "hidden_size") // _theirs(cfg, "num_attention_heads")
    return cfg.get(key, LLAMA_DEFAULTS.get(key))


def config_problems(cfg: dict, model: Model, where: str) -> list[str]:
    """What in a config.json is not the GPT `model` (whose keys live under `where`, e.g. `trunks.main.model`)."""
    archs = cfg.get("architectures") or ([LLAMA_ARCH] if cfg.get("model_type") == "llama" else [])
    if LLAMA_ARCH not in archs:
        return [f"its architecture is {'/'.join(archs) or cfg.get('model_type') or 'not given'}, not {LLAMA_ARCH} "
                f"(only Llama-style checkpoints can be imported)"]
    problems = []
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        problems.append(f"it uses rope scaling '{kind}' (arbor's GPT has plain RoPE)")
    for key, want in FIXED.items():
        if _theirs(cfg, key) != want:
            problems.append(f"{key} is {_theirs(cfg, key)!r} (arbor's GPT: {want!r})")
    ours = shape_config(model)
    for key, model_key in SHAPE_KEYS.items():
        if _theirs(cfg, key) != ours[key]:
            problems.append(f"{where}.{model_key} is {ours[key]} but config.json has {key} {_theirs(cfg, key)}")
    if not problems and _theirs(cfg, "head_dim") != ours["head_dim"]:
        problems.append(f"head_dim is {_theirs(cfg, 'head_dim')}, not hidden_size / num_attention_heads "
                        f"({ours['head_dim']}) as in arbor's GPT")
    return problems


# --- reading a directory ----------------------------------------------------------------------------

def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def files(directory: str) -> list[str]:
    """The files an import of `directory` reads, a training job's inputs: config.json, the weights (the index and
    the shards it names, model.safetensors, or every *.safetensors) and tokenizer.json; for a directory that is
    not there, the names it must hold."""
    d = Path(directory)
    weights = [WEIGHTS]
    if (d / INDEX).is_file():
        try:
            weights = [INDEX, *sorted(set(json.loads((d / INDEX).read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError):
            weights = [INDEX]  # unreadable: the stage says so
    elif d.is_dir() and not (d / WEIGHTS).is_file():
        weights = sorted(p.name for p in d.glob("*.safetensors")) or weights
    return [_join(directory, n) for n in (CONFIG, *weights, TOKENIZER)]


def digest(directory: str) -> dict[str, str]:
    """SHA-256 of each file an import reads (`files`): part of the trunk's fingerprint."""
    out = {}
    for path in files(directory):
        if not Path(path).is_file():
            raise HfImportError(f"{directory} (a trunk's from_hf): {Path(path).name} is missing (a Hugging Face Llama "
                                f"directory holds {CONFIG}, *.safetensors and {TOKENIZER}; e.g. one written by export-hf)")
        out[Path(path).name] = integrity.sha256(path)
    return out


def read_config(directory: str) -> dict:
    path = Path(directory) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HfImportError(f"{directory}: no {CONFIG} (is it a Hugging Face model directory?)") from None
    except ValueError as err:
        raise HfImportError(f"{path}: not valid JSON ({err})") from None


def tokenizer_problem(directory: str, study_tokenizer: str) -> str | None:
    """Why the directory's tokenizer is not the study's (`artifacts/tokenizer/tokenizer.json`), or None."""
    path = Path(directory) / TOKENIZER
    fix = f"use its tokenizer: `tokenizer.path: {_join(directory, TOKENIZER)}` (and `tokenizer.eod_token`: its end-of-text token)"
    if not path.is_file():
        return (f"it has no {TOKENIZER}, so its vocabulary cannot be held against the study's (write one: "
                f"`AutoTokenizer.from_pretrained(d).save_pretrained(d)`), then {fix}")
    theirs, ours = json.loads(path.read_text()), json.loads(Path(study_tokenizer).read_text())
    differ = [k for k in TOKENIZER_PARTS if theirs.get(k) != ours.get(k)]
    if differ:
        return (f"its {TOKENIZER} is not the study's {study_tokenizer} (they differ in {', '.join(differ)}): the study's "
                f"token ids must mean what they meant to the model; {fix}")
    return None


def check(directory: str, model: Model, where: str, study_tokenizer: str) -> None:
    """HfImportError (one line) unless config.json describes the GPT `model` and the tokenizer is the study's."""
    problems = config_problems(read_config(directory), model, where)
    if not problems:
        problems = [p for p in [tokenizer_problem(directory, study_tokenizer)] if p]
    if problems:
        raise HfImportError(f"{directory} cannot be imported: " + "; ".join(problems))


class LlamaDir:
    """The weights of a Hugging Face directory, read from safetensors (headers first, tensors on demand)."""

    def __init__(self, directory: str) -> None:
        from safetensors import safe_open

        self.directory = directory
        self.config = read_config(directory)
        names = [Path(p).name for p in files(directory)[1:-1] if Path(p).name != INDEX]
        self.where: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in names:
            path = Path(directory) / name
            if not path.is_file():
                pickles = sorted(p.name for p in Path(directory).glob("*.bin"))
                raise HfImportError(f"{directory}: no {name}" + (f" ({', '.join(pickles)}: pickles, never read; save the "
                                    "model with `save_pretrained(..., safe_serialization=True)`)" if pickles else ""))
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    self.where[key] = str(path)
                    self.shapes[key] = tuple(f.get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.where[key], framework="pt") as f:
            return f.get_tensor(key)

    def expected_shapes(self, shape: Shape) -> dict[str, tuple[int, ...]]:
        """Every tensor a Llama of `shape` (and this directory's vocabulary) holds, with its shape."""
        h, q, kv, ffn = shape.hidden, shape.heads * shape.head_dim, shape.groups * shape.head_dim, shape.ffn
        vocab = _theirs(self.config, "vocab_size")
        out = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
        if not shape.tied:
            out["lm_head.weight"] = (vocab, h)
        per_layer = {"input_layernorm.weight": (h,), "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
                     "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
                     "post_attention_layernorm.weight": (h,), "mlp.gate_proj.weight": (ffn, h),
                     "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn)}
        for i in range(shape.layers):
            out.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
        return out

    def tensor_problems(self, shape: Shape, where: str, vocab_size: int) -> list[str]:
        """What in the tensors is not a Llama of `shape` whose vocabulary covers the study's `vocab_size` tokens."""
        want = self.expected_shapes(shape)
        extra = [k for k in self.where if k not in want and not IGNORED.search(k) and not (shape.tied and k == "lm_head.weight")]
        biases = [k for k in extra if k.endswith(".bias")]
        if biases:
            return [f"it has biases ({', '.join(biases[:3])}{', ...' if len(biases) > 3 else ''}); arbor's GPT has none"]
        problems = [f"it holds tensors a Llama of this shape has not: {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}"] if extra else []
        missing = [k for k in want if k not in self.where]
        if missing:
            problems.append(f"it lacks {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
        for key, expected in want.items():
            if key in self.shapes and self.shapes[key] != expected:
                problems.append(f"{key} has shape {list(self.shapes[key])} but {where} needs {list(expected)}")
        vocab = want["model.embed_tokens.weight"][0]
        if vocab < vocab_size:
            problems.append(f"its vocabulary has {vocab} rows, fewer than the study's tokenizer ({vocab_size} tokens)")
        return problems

    def megatron_weight(self, name: str, shape: Shape, padded_vocab: int) -> torch.Tensor:
        """One weight of the one-stage GPT (global local-spec name), the vocabulary padded to `padded_vocab` rows."""
        import torch

        weight = fuse(name, [self.tensor(k) for k in hf_names(name, shape.tied)], shape)
        if name in VOCAB_ROWS:
            rows = weight[:padded_vocab]
            weight = torch.cat([rows, rows.new_zeros(padded_vocab - rows.shape[0], rows.shape[1])])
        return weight


def shard(name: str, full: torch.Tensor, local: tuple[int, ...], tp: int, rank: int) -> torch.Tensor:
    """This tensor-parallel rank's part of a full weight: megatron splits one dimension in `tp` equal parts,
    and fc1 = [gate; up] in each half (a rank holds [its gate rows; its up rows])."""
    import torch

    if tuple(full.shape) == local:
        return full
    if name.endswith("linear_fc1.weight"):
        return torch.cat([half.chunk(tp, dim=0)[rank] for half in full.chunk(2, dim=0)])
    dim = next(d for d in range(full.dim()) if full.shape[d] != local[d])
    return full.chunk(tp, dim=dim)[rank]


def load_into(gpt: torch.nn.Module, directory: str, model: Model, vocab_size: int, where: str) -> None:
    """Copy the Llama checkpoint `directory` into `gpt`, this process's part (pipeline stage, tensor-parallel
    shard) of the GPT `model` (keys under `where`) over a tokenizer of `vocab_size` tokens, in place."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
    from megatron.core.utils import unwrap_model

    source, shape = LlamaDir(directory), Shape.of(model)
    problems = config_problems(source.config, model, where) or source.tensor_problems(shape, where, vocab_size)
    if problems:
        raise HfImportError(f"{directory} cannot be imported: " + "; ".join(problems))
    gpt = unwrap_model(gpt)
    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    offset = get_transformer_layer_offset(gpt.config)
    with torch.no_grad():
        for key, param in gpt.state_dict(keep_vars=True).items():
            if key.endswith("_extra_state"):
                continue
            m = LAYER_KEY.match(key)
            name = canonical(f"decoder.layers.{int(m[1]) + offset}.{m[2]}" if m else key)
            part = shard(name, source.megatron_weight(name, shape, padded_vocab_size(vocab_size)), tuple(param.shape), tp, rank)
            if tuple(part.shape) != tuple(param.shape):
                raise HfImportError(f"{directory}: {name} gives this process a {list(part.shape)} part, the model "
                                    f"holds {list(param.shape)}")
            param.copy_(part)
