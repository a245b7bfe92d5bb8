"""The optimizer's configuration and param groups, the same on every backend.

`optimizer_config` is megatron's `OptimizerConfig` of a trunk segment or a decay branch: `lr` is the peak LR
and `min_lr` the LR the schedule anneals to (the branch's own, from `decays.<b>`). megatron copies both onto
every param group as `max_lr` / `min_lr` (`_get_param_groups`), and its `OptimizerParamScheduler` prefers a
group's values to its own: the groups, not the scheduler, decide the LR. The GPU backend hands the config to
`get_megatron_optimizer`; the CPU backend builds the very same groups with `param_groups` and runs torch's
AdamW over them (`workflow.train.cpu.CpuAdamW`).
"""

from __future__ import annotations

import torch

from workflow.params import Params

# Group keys megatron's optimizers and scheduler read; a loaded checkpoint brings its own (`group_settings`).
SETTINGS = ("max_lr", "min_lr", "wd_mult", "lr_mult", "is_decoupled_lr", "is_expert_parallel", "default_config",
            "weight_decay", "betas", "eps")


def peak_and_final_lr(params: Params, branch: str | None = None) -> tuple[float, float]:
    """(peak LR, LR at the end of the anneal): the trunk's (`trunk.lr`, 0: it never anneals) or a branch's."""
    t = params.trunk
    if branch is None:
        return t.lr, (t.final_lr_ratio * t.lr if t.schedule != "wsd" else 0.0)
    d = params.decays[branch]
    return d.peak_lr(t), d.min_lr(t)


def optimizer_config(params: Params, branch: str | None = None, *, bf16: bool = False,
                     distributed_optimizer: bool = False):
    """megatron's AdamW settings for the trunk (`branch=None`) or a decay branch. `bf16`: fp32 main weights of
    bf16 parameters (GPU); `distributed_optimizer`: ZeRO-1 sharding over data-parallel replicas (GPU)."""
    from megatron.core.optimizer import OptimizerConfig

    t = params.trunk
    peak, final = peak_and_final_lr(params, branch)
    return OptimizerConfig(optimizer="adam", lr=peak, min_lr=final, weight_decay=t.weight_decay,
                           adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps,
                           clip_grad=t.grad_clip, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                           use_distributed_optimizer=distributed_optimizer)


def param_groups(model: torch.nn.Module, config) -> list[dict]:
    """megatron's param groups of `model` (what `get_megatron_optimizer` builds): no weight decay on 1-D
    parameters, `max_lr = config.lr`, `min_lr = config.min_lr` on every group."""
    from megatron.core.optimizer import _get_param_groups

    return _get_param_groups([model], config, None)


def megatron_optimizer(model: torch.nn.Module, config):
    """The GPU backend's optimizer: megatron's (fp32 main weights, clipping, optional distributed optimizer)."""
    from megatron.core.optimizer import get_megatron_optimizer

    return get_megatron_optimizer(config, [model])


def ddp_config(distributed_optimizer: bool):
    """Megatron DDP on GPU (fp32 gradient reduction; with `calculate_per_token_loss` in the model config the
    gradients are summed over replicas, not averaged: losses are already divided by the global batch's tokens)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer)


def group_settings(optimizer) -> list[dict]:
    """The settings of each param group (everything but the parameters and the current LR)."""
    return [{k: g[k] for k in SETTINGS if k in g} for g in optimizer.param_groups]


def keep_settings(optimizer, settings: list[dict]) -> None:
    """Put `settings` (from `group_settings`) back after a checkpoint load: torch's `load_state_dict` restores
    the saved groups' `max_lr` / `min_lr` / weight decay, which are the parent run's (a decay loading its
    trunk checkpoint would otherwise anneal to the trunk's final LR, 0, from the trunk's peak)."""
    groups = optimizer.param_groups
    assert len(groups) == len(settings), f"{len(groups)} param groups after loading, {len(settings)} before"
    for group, values in zip(groups, settings):
        group.update(values)
