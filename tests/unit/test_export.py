"""`export-hf`: megatron checkpoints as HF LlamaForCausalLM directories with the same logits, usable by lm-eval's `hf`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.unit.conftest import train_params_dict
from tests.unit.test_evaluate import MODEL, build_study
from workflow import export, hf
from workflow.params import parse_params

TOLERANCE = 1e-4  # max abs logit difference, fp32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The evaluation study (main@2 + local task data) and main@2 exported to `hf/`."""
    root = tmp_path_factory.mktemp("export-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ARBOR_THREADS", "1")
        params = build_study(root)
        export.run(params, MODEL, "hf")
    return root, params


@pytest.fixture
def in_export(exported, monkeypatch):
    root, params = exported
    monkeypatch.chdir(root)
    monkeypatch.setenv("ARBOR_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return params


def test_split_qkv_follows_megatrons_grouped_layout():
    """Fused rows are [q heads of group 0 | k0 | v0 | q heads of group 1 | k1 | v1 ...], head_dim rows each; fusing undoes it."""
    heads, groups, head_dim, hidden = 6, 2, 3, 4
    per_group = heads // groups
    rows = [(kind, g, j) for g in range(groups) for kind, j in [("q", h) for h in range(per_group)] + [("k", 0), ("v", 0)]]
    code = {r: i for i, r in enumerate(rows)}  # each (kind, group, head) gets a distinct number in its rows
    qkv = torch.tensor([[float(code[r])] * hidden for r in rows for _ in range(head_dim)])
    q, k, v = hf.split_qkv(qkv, heads, groups, head_dim)
    assert q.shape == (heads * head_dim, hidden) and k.shape == v.shape == (groups * head_dim, hidden)
    for h in range(heads):  # HF query head h belongs to kv group h // per_group
        assert (q[h * head_dim:(h + 1) * head_dim] == code[("q", h // per_group, h % per_group)]).all()
    for g in range(groups):
        assert (k[g * head_dim:(g + 1) * head_dim] == code[("k", g, 0)]).all()
        assert (v[g * head_dim:(g + 1) * head_dim] == code[("v", g, 0)]).all()
    assert torch.equal(hf.fuse_qkv(q, k, v, heads, groups, head_dim), qkv)  # the import's inverse


@pytest.mark.parametrize("tied", [True, False])
def test_converted_weights_give_the_same_logits(train_study, tied):
    """A freshly initialised megatron model (GQA, tied or untied) and its Llama conversion agree in fp32."""
    from transformers import LlamaForCausalLM

    from workflow.train.loop import setup
    from workflow.train.model import build_model

    raw = train_params_dict()
    raw["model"] = {**raw["model"], "tie_embeddings": tied, "rotary_base": 500}
    params = parse_params(raw)
    backend, tokenizer = setup(params)
    torch.manual_seed(0)
    gpt = build_model(params.model, backend, tokenizer.vocab_size).eval()
    state = {k: v for k, v in gpt.state_dict().items() if isinstance(v, torch.Tensor)}
    assert ("output_layer.weight" in state) != tied
    llama = LlamaForCausalLM(hf.llama_config(params.model, gpt.embedding.word_embeddings.weight.shape[0], tokenizer.eod)).eval()
    llama.load_state_dict(hf.to_llama(state, hf.Shape.of(params.model)), strict=True)
    tokens = torch.randint(0, tokenizer.vocab_size, (2, params.model.seq_length))
    with torch.no_grad():
        ours = gpt(tokens, torch.arange(tokens.size(1)).expand_as(tokens), None)
        theirs = llama(tokens).logits
    assert (ours - theirs).abs().max() <= TOLERANCE


def test_export_loads_in_transformers_with_matching_logits(in_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workflow.evaluate.harness import ArborLM
    from workflow.evaluate.model import load_model

    out = Path("hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "arbor.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 384
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (4, 2, True)
    assert json.loads((out / "arbor.json").read_text())["lineage"]["step"] == 2
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # CPU
    loaded = load_model(in_export, MODEL)
    tokens = torch.randint(0, loaded.tokenizer.vocab_size, (3, in_export.model.seq_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(tokens).logits - loaded.logits(tokens)).abs().max()
    assert diff <= TOLERANCE
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "def f(x):\n    return x + 1  # the cat sat"
    ours = ArborLM(loaded, 1, in_export.model.seq_length)
    assert hf_tok.encode(text, add_special_tokens=False) == ours.tok_encode(text)
    assert hf_tok.eos_token_id == loaded.tokenizer.eod == model.config.eos_token_id


def test_lm_eval_hf_model_agrees_with_arbor_lm(in_export):
    """lm-eval's own `hf` model on the export scores the local tasks (offline) like our model class does."""
    from lm_eval import simple_evaluate

    from workflow.evaluate.harness import BOOTSTRAP_ITERS, run_tasks, scores, task_manager
    from workflow.evaluate.model import load_model

    tasks = ["arbor_cloze", "arbor_heldout"]
    hf = scores(simple_evaluate(model="hf", model_args={"pretrained": str(Path("hf").resolve()), "dtype": "float32"},
                                device="cpu", batch_size=4, tasks=tasks, task_manager=task_manager(tasks),
                                bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False))
    ours = run_tasks(in_export, load_model(in_export, MODEL))
    assert set(hf) == set(ours) == set(tasks)
    assert hf["arbor_cloze"]["samples"] == ours["arbor_cloze"]["samples"] > 0
    assert hf["arbor_cloze"]["acc"] == ours["arbor_cloze"]["acc"] and hf["arbor_cloze"]["acc_norm"] == ours["arbor_cloze"]["acc_norm"]
    assert hf["arbor_heldout"]["bits_per_byte"] == pytest.approx(ours["arbor_heldout"]["bits_per_byte"], rel=1e-5)


def test_export_of_a_missing_model_is_a_clear_error(in_export, tmp_path):
    from workflow.errors import StageError

    with pytest.raises(StageError, match="main@9.*build it first"):
        export.run(in_export, "main@9", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
