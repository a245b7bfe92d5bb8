"""CPU vs GPU: the one place where the two execution paths differ.

CPU: megatron-core local layer spec with a torch SDPA core attention, fp32, gloo, torch AdamW with
     data-parallel (and tied-embedding) gradient all-reduce and global-norm clipping over TP and PP ranks.
GPU: Transformer Engine layer spec, bf16 (`Float16Module`) + FP8 from params, NCCL, megatron's DDP and
     optimizer (distributed optimizer optional).

`validate()` is the single judge of whether the params can run here; `check` calls it, so asking for
FP8 without Transformer Engine, or on a GPU without FP8 support, fails before any job starts — never
a silent bf16 run. Both optimizers share megatron's interface (`zero_grad`, `step() -> (ok, grad_norm,
zeros)`, `param_groups`, `sharded_state_dict`, `load_state_dict`), so the loop and the checkpoints have
one code path.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import types
import warnings
from typing import Any

import torch

from workflow.errors import StageError
from workflow.params import Model, Parallel, Trunk

log = logging.getLogger(__name__)

# Lowest CUDA compute capability whose tensor cores run each TE FP8 recipe (Ada 8.9 has FP8;
# block scaling needs Hopper; MXFP8 needs Blackwell).
FP8_MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}


def quiet_megatron() -> None:
    """Silence import-time chatter on CPU (no Apex/TE), torch DCP's ShardedTensor deprecation, and info logs."""
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine|full scope is deprecated).*")
    warnings.filterwarnings("ignore", message=r".*Please use DTensor instead.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*`load_state_dict` is deprecated.*", category=FutureWarning)
    logging.getLogger("megatron").setLevel(logging.WARNING)


quiet_megatron()


class BackendError(StageError):
    """The requested backend cannot run here; the message names the key and says what to change."""


# --- choosing and validating -----------------------------------------------------------------

def have_te() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA install
        return False
    return True


def fp8_problem(recipe: str, capability: tuple[int, int]) -> str | None:
    """Why a GPU of this compute capability cannot run the FP8 `recipe`, or None."""
    need = FP8_MIN_CAPABILITY[recipe]
    if tuple(capability) < need:
        return (f"model.fp8.recipe '{recipe}' needs a GPU of compute capability >= {need[0]}.{need[1]} "
                f"(this one is {capability[0]}.{capability[1]}); choose another recipe or set model.fp8: null")
    return None


def choose(model: Model) -> str:
    """`model.backend` with `auto` resolved: gpu when CUDA is visible, else cpu."""
    if model.backend != "auto":
        return model.backend
    return "gpu" if torch.cuda.is_available() else "cpu"


def validate(model: Model) -> str:
    """Raise BackendError unless `model` can train here; returns the backend name (cpu|gpu)."""
    name = choose(model)
    if model.fp8 is not None and not have_te():
        raise BackendError("model.fp8 is set but Transformer Engine is not importable here, and megatron would then "
                           "silently train in bf16; install the `gpu` extra (pip install 'arbor[gpu]') on a GPU machine "
                           "or set model.fp8: null")
    if model.fp8 is not None and name != "gpu":
        raise BackendError(f"model.fp8 is set but the backend is '{name}' (CUDA visible: {torch.cuda.is_available()}): "
                           "FP8 needs a CUDA GPU; set model.backend: gpu (or auto) or model.fp8: null")
    if name == "cpu":
        return name
    if not torch.cuda.is_available():
        raise BackendError("model.backend is 'gpu' but no CUDA device is visible; use backend: cpu or auto")
    if not have_te():
        raise BackendError("model.backend 'gpu' needs Transformer Engine, which is not importable here; install the "
                           "`gpu` extra (pip install 'arbor[gpu]') or use backend: cpu")
    if model.fp8 is not None:
        problem = fp8_problem(model.fp8.recipe, torch.cuda.get_device_capability())
        if problem:
            raise BackendError(problem)
    try:  # megatron's own consistency checks of the precision settings
        from workflow.train.model import transformer_config

        transformer_config(model, gpu_config_kwargs(model))
    except (ValueError, AssertionError) as err:
        raise BackendError(f"model: megatron rejects these settings: {err}") from None
    return name


def gpu_config_kwargs(model: Model) -> dict[str, Any]:
    """TransformerConfig precision settings of the GPU backend: bf16 weights/activations, FP8 from params."""
    kwargs: dict[str, Any] = {"bf16": True, "params_dtype": torch.bfloat16}
    if model.fp8 is not None:
        kwargs.update(fp8=model.fp8.format, fp8_recipe=model.fp8.recipe, fp8_margin=model.fp8.margin,
                      fp8_amax_history_len=model.fp8.amax_history_len, fp8_amax_compute_algo="max",
                      first_last_layers_bf16=model.fp8.first_last_layers_bf16)
    return kwargs


CPU_CONFIG_KWARGS = {"use_cpu_initialization": True, "params_dtype": torch.float32}


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # "cpu" | "gpu"
    device: torch.device
    dist_backend: str  # "gloo" | "nccl"
    config_kwargs: dict  # TransformerConfig precision / fp8 settings
    distributed_optimizer: bool = False

    def layer_spec(self):
        """The megatron ModuleSpec of one transformer layer."""
        if self.name == "gpu":
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            return get_gpt_layer_with_transformer_engine_spec()
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        from workflow.train.model import SDPAttention

        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
        return spec

    def autocast(self):
        """Mixed precision for a bare (unwrapped) model's forward: bf16 on GPU, nothing on CPU."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.name == "gpu" else contextlib.nullcontext()

    # --- training pieces ------------------------------------------------------------------

    def wrap_for_training(self, gpt: torch.nn.Module) -> torch.nn.Module:
        """GPU: `Float16Module` (bf16) inside megatron's DDP (grad buffers, DP reduce). CPU: as is."""
        if self.name != "gpu":
            return gpt
        from megatron.core.distributed import DistributedDataParallel
        from megatron.core.transformer.module import Float16Module

        return DistributedDataParallel(gpt.config, ddp_config(self.distributed_optimizer), Float16Module(gpt.config, gpt))

    def optimizer(self, model: torch.nn.Module, trunk: Trunk):
        """AdamW with clipping; no weight decay on 1-D parameters (norms)."""
        if self.name == "gpu":
            from megatron.core.optimizer import get_megatron_optimizer

            return get_megatron_optimizer(optimizer_config(trunk, self.distributed_optimizer), [model])
        return CpuAdamW(model, trunk)

    def zero_grad(self, model: torch.nn.Module, optimizer) -> None:
        if self.name == "gpu":
            model.zero_grad_buffer()
        optimizer.zero_grad()

    def finish_grads(self, model: torch.nn.Module) -> None:
        """After the last backward of a step: reduce gradients over data-parallel replicas and, with pipeline
        stages and tied embeddings, sum the word-embedding gradients of the first and last stage (each holds
        a copy of that weight)."""
        if self.name == "gpu":
            from megatron.core.distributed import finalize_model_grads

            finalize_model_grads([model])
            return
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


def ddp_config(distributed_optimizer: bool):
    """Megatron DDP on GPU (fp32 gradient reduction; with `calculate_per_token_loss` in the model config the
    gradients are summed over replicas, not averaged: losses are already divided by the global batch's tokens)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer)


def optimizer_config(trunk: Trunk, distributed_optimizer: bool):
    """Megatron's AdamW (fp32 main weights of bf16 params, clipping, optional ZeRO-1 sharding)."""
    from megatron.core.optimizer import OptimizerConfig

    return OptimizerConfig(optimizer="adam", lr=trunk.lr, min_lr=0.0, weight_decay=trunk.weight_decay,
                           adam_beta1=trunk.adam_beta1, adam_beta2=trunk.adam_beta2, adam_eps=trunk.adam_eps,
                           clip_grad=trunk.grad_clip, bf16=True, params_dtype=torch.bfloat16,
                           use_distributed_optimizer=distributed_optimizer)


def resolve(model: Model) -> Backend:
    """The validated backend of `model` (see `validate`)."""
    if validate(model) == "gpu":
        return Backend("gpu", torch.device("cuda", torch.cuda.current_device()), "nccl", gpu_config_kwargs(model),
                       model.parallel.distributed_optimizer)
    install_cpu_shims()
    return Backend("cpu", torch.device("cpu"), "gloo", CPU_CONFIG_KWARGS)


def install_cpu_shims() -> None:
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


def set_threads() -> None:
    """`ARBOR_THREADS` caps intra-op threads (parallel Snakemake jobs and torchrun ranks share the cores)."""
    if os.environ.get("ARBOR_THREADS"):
        torch.set_num_threads(int(os.environ["ARBOR_THREADS"]))


# --- processes -------------------------------------------------------------------------------

def init_distributed(backend: Backend, parallel: Parallel | None) -> None:
    """Start the process group and megatron's model-parallel groups.

    Under torchrun (RANK/WORLD_SIZE set) the env:// rendezvous is used. A plain single process uses a
    file store in a private temp dir, so concurrent jobs never fight over a port. `parallel` is the
    training layout (world = nproc_per_node * nodes = tp * pp * dp); None = one process, tp = pp = 1
    (evaluation and merges load any checkpoint, which reshards).
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
    tp, pp = (parallel.tp, parallel.pp) if parallel else (1, 1)
    if parallel is not None and world != parallel.nproc_per_node * parallel.nodes:
        raise BackendError(f"{world} processes but model.parallel asks for nproc_per_node * nodes = "
                           f"{parallel.nproc_per_node * parallel.nodes}; run the stage through `python -m workflow`, "
                           "which launches torchrun itself")
    if world % (tp * pp):
        raise BackendError(f"world size {world} is not a multiple of tp * pp = {tp * pp}")
    if parallel_state.model_parallel_is_initialized():
        current = (parallel_state.get_tensor_model_parallel_world_size(),
                   parallel_state.get_pipeline_model_parallel_world_size())
        if current == (tp, pp):
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)


def data_parallel() -> tuple[int, int]:
    """(rank, size) of this process among the data-parallel replicas."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def data_parallel_group():
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def seed_everything(backend: Backend, seed: int) -> None:
    """Seed torch (and megatron's CUDA RNG tracker on GPU)."""
    torch.manual_seed(seed)
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def _own_rng_state(backend: Backend) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def rng_state(backend: Backend) -> list[dict]:
    """The RNG states of every model-parallel (TP x PP) rank, in rank order, the same list on all ranks (it is
    the checkpoint's common state): pipeline stages draw different numbers (their own layers' weights and
    dropout), and so do the tensor-parallel ranks' CUDA trackers."""
    from megatron.core import parallel_state

    group = parallel_state.get_model_parallel_group()
    states: list = [None] * group.size()
    torch.distributed.all_gather_object(states, _own_rng_state(backend), group=group)
    return states


def set_rng_state(backend: Backend, states: list[dict] | dict) -> None:
    """Restore this rank's entry of `rng_state`; saved under another layout, every rank takes the first."""
    from megatron.core import parallel_state

    group = parallel_state.get_model_parallel_group()
    if isinstance(states, dict):  # saved before the states were kept per rank
        states = [states]
    state = states[group.rank()] if len(states) == group.size() else states[0]
    torch.set_rng_state(state["cpu"])
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        torch.cuda.set_rng_state(state["cuda"])
        get_cuda_rng_tracker().set_states(state["tracker"])


# --- CPU optimizer ---------------------------------------------------------------------------

class CpuAdamW:
    """torch AdamW + tensor-parallel-aware global-norm clipping, with megatron's optimizer interface.

    Its state is checkpointed as ShardedTensors keyed like the model's parameters, so it reshards
    across TP like the weights.
    """

    def __init__(self, model: torch.nn.Module, trunk: Trunk) -> None:
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]  # read by the scheduler
        self.model, self.max_norm = model, trunk.grad_clip
        self.torch = torch.optim.AdamW(groups, lr=trunk.lr, weight_decay=trunk.weight_decay,
                                       betas=(trunk.adam_beta1, trunk.adam_beta2), eps=trunk.adam_eps, foreach=True)

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
        step = loaded.pop("common_step")
        for param_state in loaded["state"].values():
            param_state["step"] = torch.tensor(step, dtype=torch.float32)
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
