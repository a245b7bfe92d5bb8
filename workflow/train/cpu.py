"""What the CPU backend puts where megatron-core assumes CUDA: shims, the core attention, the optimizer.

Imported only when the CPU backend is chosen (it loads megatron). The optimizer is torch's AdamW over the param groups megatron's own `_get_param_groups` builds (the GPU
backend's `get_megatron_optimizer` builds the same groups, then hard-codes CUDA tensors), with megatron's
optimizer interface, so the loop, the LR scheduler and the checkpoints have one code path.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention


def install_shims() -> None:
    """Without CUDA, megatron-core's CUDA assumptions are routed to the CPU:

    * buffers, RoPE and the pipeline's receive buffers live on `torch.cuda.current_device()` (the CPU here);
    * dist_checkpointing's writer and the pipeline's batched p2p call `torch.cuda.synchronize()` (a no-op);
    * with tied embeddings and pipeline stages, `LanguageModule.setup_embeddings_and_output_layer` moves the
      last stage's copy of the embedding with `.cuda()` before summing it with the first stage's (identity);
    * the pipeline schedules count tokens in `torch.zeros(..., device="cuda")` (`CpuTorch`).
    """
    if torch.cuda.is_available():
        return
    from megatron.core.pipeline_parallel import schedules

    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    schedules.torch = CpuTorch("torch")  # type: ignore[attr-defined]


class CpuTorch(types.ModuleType):
    """`torch` as megatron's pipeline schedules see it without CUDA: `zeros(device="cuda")` makes a CPU tensor."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, device="cpu" if device == "cuda" else device, **kwargs)


def layer_spec():
    """megatron's local layer spec (RMSNorm) with `SDPAttention` as the core attention."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


class SDPAttention(DotProductAttention):
    """Causal core attention through `F.scaled_dot_product_attention` (no CUDA RNG tracker, no buffers).

    Inputs are `[s, b, heads, dim]` (keys/values with `num_query_groups` heads); output `[s, b, heads*dim]`.
    """

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        assert packed_seq_params is None and attention_bias is None, "SDPAttention: packed sequences / bias unsupported"
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.softmax_scale,
            dropout_p=self.attention_dropout.p if self.training else 0.0,
            enable_gqa=q.size(1) != k.size(1))
        s, b = query.size(0), query.size(1)
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def finish_grads(model: torch.nn.Module) -> None:
    """After the last backward of a step: sum gradients over data-parallel replicas (losses are already
    divided by the global batch's tokens) and, with pipeline stages and tied embeddings, sum the
    word-embedding gradients of the first and last stage (each holds a copy of that weight)."""
    from megatron.core import parallel_state

    if parallel_state.get_data_parallel_world_size() > 1:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat, group=parallel_state.get_data_parallel_group())
        for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)
    if (parallel_state.get_pipeline_model_parallel_world_size() > 1 and model.share_embeddings_and_output_weights
            and parallel_state.is_rank_in_embedding_group(ignore_virtual=True)):
        weight = model.shared_embedding_or_output_weight()
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        torch.distributed.all_reduce(weight.grad, group=parallel_state.get_embedding_group())


class CpuAdamW:
    """torch AdamW over megatron's param groups + tensor/pipeline-parallel-aware global-norm clipping, with
    megatron's optimizer interface (`zero_grad`, `step() -> (ok, grad_norm, zeros)`, `param_groups`,
    `sharded_state_dict`, `load_state_dict`).

    `groups` come from `workflow.train.optimizer.param_groups` (each carries megatron's `max_lr`, `min_lr`,
    `wd_mult`, read by the LR scheduler). Its state is checkpointed as ShardedTensors keyed like the model's
    parameters, so it reshards across TP and PP like the weights.
    """

    def __init__(self, model: torch.nn.Module, groups: list[dict], config) -> None:
        self.model, self.max_norm = model, config.clip_grad
        self.torch = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                                       betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, foreach=True)

    @property
    def param_groups(self) -> list[dict]:  # a property: torch's load_state_dict replaces the list
        return self.torch.param_groups

    @property
    def state(self) -> dict:
        return self.torch.state

    def zero_grad(self) -> None:
        self.torch.zero_grad(set_to_none=True)

    def step(self) -> tuple[bool, float, None]:
        norm = clip_grads(self.model, self.max_norm)
        self.torch.step()
        return True, norm, None

    def sharded_state_dict(self, model_sharded: dict, is_loading: bool = False) -> dict:
        from megatron.core.dist_checkpointing.optimizer import (
            get_param_id_to_sharded_param_map, optim_state_to_sharding_state)

        if is_loading:  # empty buffers of the right shapes to load into
            for p in (p for g in self.param_groups for p in g["params"]):
                if not self.state[p]:
                    self.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        params = [p for g in self.param_groups for p in g["params"]]
        state = self.torch.state_dict()
        steps = {float(s["step"]) for s in state["state"].values()}
        assert len(steps) <= 1, f"parameters are at different optimizer steps: {steps}"
        optim_state_to_sharding_state(state, get_param_id_to_sharded_param_map(model_sharded, params),
                                      exclude_keys=("step",))
        state["common_step"] = steps.pop() if steps else 0.0
        return state

    def load_state_dict(self, loaded: dict) -> None:
        """As megatron's `FP32Optimizer.load_state_dict`: saved groups matched to the current ones by their
        identifying keys (`wd_mult`, `lr_mult`, ...), then torch's load (which takes the saved groups' settings;
        `loop.Session.restore` puts the current ones back)."""
        from megatron.core.optimizer.optimizer import MegatronOptimizer

        step = loaded.pop("common_step")
        for param_state in loaded["state"].values():
            param_state["step"] = torch.tensor(step, dtype=torch.float32)
        loaded["param_groups"] = MegatronOptimizer._filter_and_reorder_param_groups(self.param_groups,
                                                                                    loaded["param_groups"])
        self.torch.load_state_dict(loaded)


def clip_grads(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm over all tensor- and pipeline-parallel ranks, counting every weight once
    (not TP-duplicated norms twice, nor the last pipeline stage's copy of a tied embedding)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    counted = [p.grad.detach() for p in params
               if param_is_not_tensor_parallel_duplicate(p) and not getattr(p, "shared", False)]
    sq = torch.stack(torch._foreach_norm(counted)).pow(2).sum() if counted else torch.zeros(())
    if parallel_state.get_model_parallel_group().size() > 1:  # tp * pp ranks
        torch.distributed.all_reduce(sq, group=parallel_state.get_model_parallel_group())
    norm = float(sq.sqrt())
    if norm == norm and norm > max_norm:  # finite and too large
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm
