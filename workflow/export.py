"""`export-hf`: any model dir as a Hugging Face `LlamaForCausalLM` directory (fp32 safetensors, config, tokenizer).

The weight and config mapping, used both ways (a trunk's `from_hf` imports such a directory), is `workflow/hf.py`.
The vocabulary keeps its training padding (config `vocab_size` >= the tokenizer's).
"""

from __future__ import annotations

import torch

from workflow import hf, paths
from workflow.io import atomic_dir, write_json
from workflow.params import Params, scoped


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
    state = {k: v for k, v in loaded.model.state_dict().items() if isinstance(v, torch.Tensor)}
    weights = hf.to_llama(state, hf.Shape.of(params.model))
    hf_config = hf.llama_config(params.model, loaded.vocab_size, loaded.tokenizer.eod)
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
    print(f"[export-hf] {model_id} → {out}/ ({hf.LLAMA_ARCH}, {n:,} parameters, vocab {loaded.vocab_size}, fp32 safetensors)")
