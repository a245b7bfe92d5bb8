"""Backends without a GPU: the GPU configuration is built (not run) on CPU, FP8 is refused without Transformer
Engine or with shapes its GEMMs refuse (at `check` time), each rank's device, the module layout, the FLOPs formula."""

from __future__ import annotations

import pytest
import torch

from tests.unit.conftest import train_params_dict
from workflow import cli
from workflow.params import Model, ParamsError, parse_params
from workflow.train import backend as be
from workflow.train.optimizer import ddp_config
from workflow.shapes import ffn_size, flops_per_token, padded_vocab_size, parameters
from workflow.train.model import transformer_config

FP8 = {"format": "hybrid", "recipe": "tensorwise", "amax_history_len": 16, "margin": 1, "first_last_layers_bf16": True}


def test_gpu_config_is_built_on_cpu():
    from megatron.core.enums import Fp8Recipe

    model = Model(backend="gpu", num_layers=4, fp8=FP8)
    config = transformer_config(model, be.gpu_config_kwargs(model), tp=2)
    assert (config.bf16, config.params_dtype, config.tensor_model_parallel_size) == (True, torch.bfloat16, 2)
    assert (config.fp8, config.fp8_recipe, config.fp8_margin, config.fp8_amax_history_len) == ("hybrid", Fp8Recipe.tensorwise, 1, 16)
    assert config.first_last_layers_bf16 and config.num_query_groups == 4 and config.ffn_hidden_size == ffn_size(model)
    bf16_only = transformer_config(Model(backend="gpu"), be.gpu_config_kwargs(Model(backend="gpu")))
    assert bf16_only.bf16 and bf16_only.fp8 is None
    params = parse_params(train_params_dict(lr=1e-3, grad_clip=0.5))
    gpu = be.Backend("gpu", "nccl", be.gpu_config_kwargs(model), distributed_optimizer=True)
    opt = gpu.optimizer_config(params)
    assert (opt.optimizer, opt.lr, opt.min_lr, opt.clip_grad, opt.bf16, opt.use_distributed_optimizer) == \
        ("adam", 1e-3, 0.0, 0.5, True, True)
    ddp = ddp_config(distributed_optimizer=True)
    assert ddp.use_distributed_optimizer and ddp.grad_reduce_in_fp32 and config.calculate_per_token_loss


@pytest.mark.skipif(be.have_te(), reason="Transformer Engine is installed here")
def test_fp8_without_transformer_engine_is_refused():
    for backend in ("gpu", "auto", "cpu"):
        with pytest.raises(be.BackendError, match="model.fp8 .*Transformer Engine"):
            be.validate(Model(backend=backend, fp8=FP8))


@pytest.mark.skipif(be.have_te(), reason="Transformer Engine is installed here")
def test_check_refuses_fp8_without_transformer_engine(train_study, capsys):
    import yaml

    raw = train_params_dict()
    raw["model"]["fp8"] = {"recipe": "delayed"}
    with open("params.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check"])
    assert exit_.value.code == cli.EXIT_BAD_PARAMS
    assert "model.fp8" in capsys.readouterr().err
    raw["model"]["fp8"] = None
    with open("params.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    cli.main(["check"])
    assert "backend:  cpu" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_backend_without_cuda_is_refused():
    with pytest.raises(be.BackendError, match="no CUDA device"):
        be.validate(Model(backend="gpu"))
    assert be.validate(Model(backend="auto")) == "cpu"


def test_fp8_needs_a_capable_gpu():
    assert "8.9" in be.fp8_problem("delayed", (8, 0))  # A100: no FP8
    assert be.fp8_problem("delayed", (8, 9)) is None and be.fp8_problem("tensorwise", (9, 0)) is None
    assert "9.0" in be.fp8_problem("blockwise", (8, 9))
    assert "10.0" in be.fp8_problem("mxfp8", (9, 0)) and be.fp8_problem("mxfp8", (10, 0)) is None


@pytest.mark.parametrize("change, key", [
    ({"model": {"fp8": {"recipe": "delayed", "first_last_layers_bf16": True}}}, "model.fp8"),
    ({"model": {"num_query_groups": 2, "parallel": {"tp": 4, "nproc_per_node": 4}}}, "model"),
    ({"model": {"parallel": {"tp": 2, "nproc_per_node": 3}}}, "model.parallel"),
    ({"model": {"num_layers": 2, "parallel": {"tp": 2, "pp": 2, "nproc_per_node": 2}}}, r"tp \* pp \(4\)"),
    ({"model": {"num_layers": 3, "parallel": {"pp": 2, "nproc_per_node": 2}}}, "parallel.pp .* num_layers"),
    ({"model": {"parallel": {"nproc_per_node": 4}}, "trunk": {"global_batch_size": 4, "micro_batch_size": 2}}, "global_batch_size"),
])
def test_layout_and_precision_errors_name_the_key(change, key):
    raw = train_params_dict()
    for section, values in change.items():
        for k, v in values.items():
            raw[section][k] = v
    with pytest.raises(ParamsError, match=key):
        parse_params(raw)


def test_pipeline_parallel_config():
    model = Model(backend="cpu", num_layers=2, parallel={"pp": 2, "nproc_per_node": 2})
    assert be.validate(model) == "cpu"
    assert transformer_config(model, be.CPU_CONFIG_KWARGS, pp=2).pipeline_dtype == torch.float32
    assert transformer_config(model, be.gpu_config_kwargs(model), pp=2).pipeline_dtype == torch.bfloat16


def test_vocab_padding_does_not_depend_on_tp():
    assert padded_vocab_size(300) == padded_vocab_size(300, tp=2) == padded_vocab_size(300, tp=8) == 384
    with pytest.raises(ValueError, match="tp"):
        padded_vocab_size(300, tp=5)


def test_flops_per_token_matches_torch_flop_counter(train_study):
    """The MFU numerator: 3x the forward matmul FLOPs torch counts on the real model (torch counts no FLOPs
    for CPU SDPA, so attention's 4*s*h per layer and token is checked by formula only)."""
    from torch.utils.flop_counter import FlopCounterMode

    from workflow.train.loop import setup
    from workflow.train.model import build_model, token_losses

    params = train_study()
    backend, tok = setup(params)
    model = build_model(params.model, backend, tok.vocab_size)
    tokens = torch.randint(0, tok.vocab_size, (2, params.model.seq_length))
    with FlopCounterMode(display=False) as counter:
        token_losses(model, backend, tokens, tokens)
    per_token = 3 * counter.get_total_flops() / tokens.numel()
    assert flops_per_token(params.model, tok.vocab_size, attention=False) == pytest.approx(per_token, rel=1e-9)
    m = params.model
    attention = 3 * m.num_layers * 4 * m.seq_length * m.hidden_size
    assert flops_per_token(m, tok.vocab_size) == flops_per_token(m, tok.vocab_size, attention=False) + attention
    for tied in (True, False):  # the cost estimate's parameter count is the real model's
        shape = m.model_copy(update={"tie_embeddings": tied})
        real = sum(p.numel() for p in build_model(shape, backend, tok.vocab_size).parameters())
        assert parameters(shape, tok.vocab_size) == real


def test_gpu_rank_uses_the_gpu_of_its_local_rank(monkeypatch):
    """Every rank on its own GPU: the device is read from LOCAL_RANK when used (after `distributed.init` selected
    it), never fixed while the process still sees cuda:0 as current."""
    gpu = be.Backend("gpu", "nccl", {})
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert gpu.device == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert gpu.device == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert gpu.device == torch.device("cuda", 0)
    assert be.Backend("cpu", "gloo", {}).device == torch.device("cpu")


def test_one_concern_per_module_without_import_side_effects():
    """model.py does not import backend.py (no cycle), and importing the training package neither loads megatron
    nor changes the warning filters (megatron is quieted by `loop.setup()`, when a stage starts)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys, warnings, torch, numpy; before = list(warnings.filters); import workflow.train.model; "
            "assert 'workflow.train.backend' not in sys.modules, 'model imports backend'; "
            "import workflow.train.backend, workflow.train.loop, workflow.train.trunk, workflow.train.decay; "
            "assert warnings.filters == before, 'an import changed the warning filters'; "
            "assert not [m for m in sys.modules if m.startswith('megatron')], 'importing the package loads megatron'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fp8_shapes_are_judged_at_check_time():
    """Transformer Engine's FP8 GEMMs need widths of 16 and rows of 8 per TP rank; `check` says which shape fails
    before it says anything about the machine (no TE, no GPU)."""
    tiny = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
                seq_length=64, fp8=FP8)
    assert be.fp8_shape_problems(Model(backend="gpu", **tiny, parallel={"tp": 2, "nproc_per_node": 2})) == []
    odd = Model(backend="gpu", **(tiny | {"seq_length": 100, "ffn_hidden_size": 200}))
    problems = be.fp8_shape_problems(odd)
    assert problems == ["model.seq_length (100) is not a multiple of 16",
                        "linear_fc2 input width 200 (per TP rank) is not a multiple of 16"]
    with pytest.raises(be.BackendError, match=r"FP8 GEMMs refuse these shapes: model\.seq_length \(100\)"):
        be.validate(odd)
    split = Model(backend="gpu", **(tiny | {"hidden_size": 80, "num_attention_heads": 10, "num_query_groups": 10}),
                  parallel={"tp": 2, "nproc_per_node": 2})
    assert be.fp8_shape_problems(split) == ["linear_proj input width 40 (per TP rank) is not a multiple of 16"]


def test_check_names_an_fp8_shape(train_study, capsys):
    import yaml

    raw = train_params_dict()
    raw["model"].update(seq_length=40, fp8={"recipe": "tensorwise"})
    with open("params.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check"])
    assert exit_.value.code == cli.EXIT_BAD_PARAMS
    assert "model.seq_length (40) is not a multiple of 16" in capsys.readouterr().err
