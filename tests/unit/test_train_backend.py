"""Backends and launching without a GPU: the GPU configuration is built (not run) on CPU, FP8 is refused
without Transformer Engine (at `check` time), the torchrun command lines, the FLOPs formula."""

from __future__ import annotations

import pytest
import torch

from tests.unit.conftest import train_params_dict
from workflow import cli
from workflow.params import Model, ParamsError, Parallel, Trunk, parse_params
from workflow.train import backend as be
from workflow.train.launch import LaunchError, torchrun_command
from workflow.train.model import flops_per_token, ffn_size, padded_vocab_size, transformer_config

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
    trunk = Trunk(checkpoints=[10], lr=1e-3, grad_clip=0.5)
    opt = be.optimizer_config(trunk, distributed_optimizer=True)
    assert (opt.optimizer, opt.lr, opt.clip_grad, opt.bf16, opt.use_distributed_optimizer) == ("adam", 1e-3, 0.5, True, True)
    ddp = be.ddp_config(distributed_optimizer=True)
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


def test_torchrun_command():
    argv = ["--params", "p.yaml", "trunk", "--step", "8"]
    assert torchrun_command(Parallel(), argv, {}) is None
    one_node = torchrun_command(Parallel(tp=2, nproc_per_node=2), argv, {})
    assert one_node[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "workflow", *argv]
    assert torchrun_command(Parallel(tp=2, nproc_per_node=2), argv, {"RANK": "0", "WORLD_SIZE": "2"}) is None
    with pytest.raises(LaunchError, match="SLURM"):
        torchrun_command(Parallel(nproc_per_node=2, nodes=2), argv, {})
    slurm = {"SLURM_JOB_ID": "4321", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "MASTER_ADDR": "node07"}
    multi = torchrun_command(Parallel(nproc_per_node=2, nodes=2), argv, slurm)
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=node07", "--master-port=33821"} <= set(multi)
    with pytest.raises(LaunchError, match="3 nodes"):
        torchrun_command(Parallel(nproc_per_node=2, nodes=2), argv, slurm | {"SLURM_NNODES": "3"})


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
