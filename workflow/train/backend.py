"""CPU vs GPU: the one place where the two execution paths differ.

CPU: megatron-core local layer spec with a torch SDPA core attention, fp32, gloo, torch AdamW.
GPU: Transformer Engine layer spec, bf16 (+ FP8 from params), NCCL. TE is imported lazily, only
when the GPU path is chosen; asking for FP8 without TE is an error, never a silent bf16 run.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from workflow.params import Model

log = logging.getLogger(__name__)


def quiet_megatron() -> None:
    """Silence import-time chatter on CPU (no Apex/TE), torch DCP's ShardedTensor deprecation, and info logs."""
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine|full scope is deprecated).*")
    warnings.filterwarnings("ignore", message=r".*Please use DTensor instead.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*`load_state_dict` is deprecated.*", category=FutureWarning)
    logging.getLogger("megatron").setLevel(logging.WARNING)


quiet_megatron()


class BackendError(RuntimeError):
    """The requested backend cannot run here; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # "cpu" | "gpu"
    device: torch.device
    dist_backend: str  # "gloo" | "nccl"
    config_kwargs: dict  # TransformerConfig precision / fp8 settings

    def layer_spec(self):
        """The megatron ModuleSpec of one transformer layer."""
        if self.name == "gpu":
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            return get_gpt_layer_with_transformer_engine_spec()
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
        return spec

    def autocast(self):
        """Mixed-precision context for forward passes (bf16 on GPU, nothing on CPU)."""
        if self.name == "gpu":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()


def _have_te() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA install
        return False
    return True


def resolve(model: Model) -> Backend:
    """Pick the backend from `model.backend` (auto: GPU when CUDA is present) and validate it."""
    choice = model.backend
    if choice == "auto":
        choice = "gpu" if torch.cuda.is_available() else "cpu"
    if model.fp8 is not None and (choice != "gpu" or not _have_te()):
        raise BackendError(
            "model.fp8 is set but FP8 needs a CUDA GPU and Transformer Engine "
            f"(backend={choice}, CUDA={torch.cuda.is_available()}, TE installed={_have_te()}); "
            "install the `gpu` extra on a GPU machine or set model.fp8: null")
    if choice == "gpu":
        if not torch.cuda.is_available():
            raise BackendError("model.backend is 'gpu' but no CUDA device is visible; use backend: cpu or auto")
        if not _have_te():
            raise BackendError("model.backend 'gpu' needs Transformer Engine (pip install 'arbor[gpu]'); "
                               "use backend: cpu to train with the local layer spec")
        kwargs: dict[str, Any] = {"bf16": True, "params_dtype": torch.float32}
        if model.fp8 is not None:
            kwargs.update(fp8=model.fp8.format, fp8_recipe=model.fp8.recipe, fp8_margin=model.fp8.margin,
                          fp8_amax_history_len=model.fp8.amax_history_len, fp8_amax_compute_algo="max",
                          first_last_layers_bf16=model.fp8.first_last_layers_bf16)
        return Backend("gpu", torch.device("cuda", torch.cuda.current_device()), "nccl", kwargs)
    install_cpu_shims()
    return Backend("cpu", torch.device("cpu"), "gloo", {"use_cpu_initialization": True, "params_dtype": torch.float32})


def install_cpu_shims() -> None:
    """Without CUDA: megatron-core asks `torch.cuda.current_device()` for buffers and RoPE (route it to
    the CPU), and dist_checkpointing's writer calls `torch.cuda.synchronize()` after staging (a no-op)."""
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
        torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]


def set_threads() -> None:
    """`ARBOR_THREADS` caps intra-op threads (parallel Snakemake jobs share the cores)."""
    if os.environ.get("ARBOR_THREADS"):
        torch.set_num_threads(int(os.environ["ARBOR_THREADS"]))


def init_distributed(backend: Backend, tp: int, pp: int) -> None:
    """Start the process group and megatron's model-parallel groups (idempotent).

    Under torchrun (RANK/WORLD_SIZE set) the env:// rendezvous is used. A plain single process
    uses a file store in a private temp dir, so concurrent jobs never fight over a port.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            if backend.name == "gpu":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend.dist_backend)
        else:
            store_dir = tempfile.mkdtemp(prefix="arbor-pg-")
            atexit.register(shutil.rmtree, store_dir, True)
            store = dist.FileStore(os.path.join(store_dir, "store"), 1)
            dist.init_process_group(backend.dist_backend, store=store, rank=0, world_size=1)
    world = dist.get_world_size()
    if pp != 1:
        raise BackendError("model.parallel.pp > 1 is not supported yet by the training loop; set pp: 1")
    if world != tp * pp:
        raise BackendError(f"world size {world} != tp*pp = {tp * pp}: data parallelism is not supported yet; "
                           "launch exactly tp processes")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)


def seed_everything(backend: Backend, seed: int) -> None:
    """Seed torch (and megatron's CUDA RNG tracker on GPU)."""
    torch.manual_seed(seed)
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def rng_state(backend: Backend) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def set_rng_state(backend: Backend, state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda"])
        get_cuda_rng_tracker().set_states(state["tracker"])


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   eps: float) -> torch.optim.Optimizer:
    """AdamW with no weight decay on 1-D parameters (norms). `wd_mult` is read by megatron's scheduler."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, foreach=True)


# --- CPU core attention ----------------------------------------------------------------------

from megatron.core.transformer.dot_product_attention import DotProductAttention  # noqa: E402


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
