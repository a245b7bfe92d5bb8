"""CPU or GPU: which backend trains here, whether it can, and the few things that differ between them.

CPU: megatron-core local layer spec with a torch SDPA core attention, fp32, gloo, torch AdamW (`cpu.py`).
GPU: Transformer Engine layer spec, bf16 (`Float16Module`) + FP8 from params, NCCL, megatron's DDP and
     optimizer (distributed optimizer optional), one GPU per rank (`cuda:<LOCAL_RANK>`).
Everything else is one code path: the model (`model.py`), megatron's param groups and LR scheduler
(`optimizer.py`), the process groups and RNG state (`distributed.py`), the loop and the checkpoints.

`validate()` is the single judge of whether the params can run here; `check` calls it, so asking for
FP8 without Transformer Engine, on a GPU without FP8 support, or with shapes FP8 GEMMs refuse, fails
before any job starts — never a silent bf16 run, never a crash in the first evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from typing import Any

import torch

from workflow.errors import StageError
from workflow.params import Model, Params
from workflow.train import distributed

# Lowest CUDA compute capability whose tensor cores run each TE FP8 recipe (Ada 8.9 has FP8;
# block scaling needs Hopper; MXFP8 needs Blackwell).
FP8_MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}
# Transformer Engine's FP8 GEMMs (`assert_dim_for_fp8_exec`): an input's last dimension divisible by 16, the
# product of the others (tokens; a weight's output rows) by 8. Evaluation pads every sequence to a multiple of
# FP8_TOKEN_MULTIPLE tokens (`workflow.evaluate.model.pad_length`), so any batch of it has such a token count.
FP8_INNER_MULTIPLE, FP8_OUTER_MULTIPLE, FP8_TOKEN_MULTIPLE = 16, 8, 16


def quiet_megatron() -> None:
    """Silence import-time chatter on CPU (no Apex/TE), torch DCP's ShardedTensor deprecation, and info logs.
    Called by `loop.setup()` (the start of every stage that builds a model), before megatron is imported."""
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine|full scope is deprecated).*")
    warnings.filterwarnings("ignore", message=r".*Please use DTensor instead.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*`load_state_dict` is deprecated.*", category=FutureWarning)
    logging.getLogger("megatron").setLevel(logging.WARNING)


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


def fp8_shape_problems(model: Model) -> list[str]:
    """Shapes of `model` that Transformer Engine's FP8 GEMMs refuse, per tensor-parallel rank: every FP8 linear
    layer's input width (a multiple of 16) and output rows (of 8), and the tokens of a training micro-batch or
    of an evaluation batch (sequences are `model.seq_length`, or padded to a multiple of 16 tokens, never
    beyond `seq_length`: so `seq_length` itself must be a multiple of 16)."""
    from workflow.shapes import ffn_size

    tp = model.parallel.tp
    head_dim = model.hidden_size // model.num_attention_heads
    groups = model.num_query_groups or model.num_attention_heads
    ffn = ffn_size(model)
    layers = {  # name: (input width, output rows) per TP rank (column parallel: rows split; row parallel: width)
        "linear_qkv": (model.hidden_size, (model.num_attention_heads + 2 * groups) * head_dim // tp),
        "linear_proj": (model.num_attention_heads * head_dim // tp, model.hidden_size),
        "linear_fc1": (model.hidden_size, 2 * ffn // tp),
        "linear_fc2": (ffn // tp, model.hidden_size),
    }
    problems = []
    if model.seq_length % FP8_TOKEN_MULTIPLE:
        problems.append(f"model.seq_length ({model.seq_length}) is not a multiple of {FP8_TOKEN_MULTIPLE}")
    for name, (width, rows) in layers.items():
        if width % FP8_INNER_MULTIPLE:
            problems.append(f"{name} input width {width} (per TP rank) is not a multiple of {FP8_INNER_MULTIPLE}")
        if rows % FP8_OUTER_MULTIPLE:
            problems.append(f"{name} output rows {rows} (per TP rank) are not a multiple of {FP8_OUTER_MULTIPLE}")
    return problems


def choose(model: Model) -> str:
    """`model.backend` with `auto` resolved: gpu when CUDA is visible, else cpu."""
    if model.backend != "auto":
        return model.backend
    return "gpu" if torch.cuda.is_available() else "cpu"


def validate(model: Model) -> str:
    """Raise BackendError unless `model` can train (and be evaluated) here; returns the backend name (cpu|gpu)."""
    name = choose(model)
    if model.fp8 is not None:
        shapes = fp8_shape_problems(model)
        if shapes:
            raise BackendError(f"model.fp8 is set but Transformer Engine's FP8 GEMMs refuse these shapes: "
                               f"{'; '.join(shapes)}; change model.hidden_size / ffn_hidden_size / seq_length / "
                               "parallel.tp, or set model.fp8: null")
        if not have_te():
            raise BackendError("model.fp8 is set but Transformer Engine is not importable here, and megatron would "
                               "then silently train in bf16; install the `gpu` extra (pip install 'arbor[gpu]') on a "
                               "GPU machine or set model.fp8: null")
        if name != "gpu":
            raise BackendError(f"model.fp8 is set but the backend is '{name}' (CUDA visible: "
                               f"{torch.cuda.is_available()}): FP8 needs a CUDA GPU; set model.backend: gpu (or auto) "
                               "or model.fp8: null")
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


# --- the backend -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # "cpu" | "gpu"
    dist_backend: str  # "gloo" | "nccl"
    config_kwargs: dict  # TransformerConfig precision / fp8 settings
    distributed_optimizer: bool = False

    @property
    def device(self) -> torch.device:
        """This rank's device, read when used (after `distributed.init` selected it): `cuda:<LOCAL_RANK>` or cpu."""
        return distributed.local_device(self.name)

    def layer_spec(self):
        """The megatron ModuleSpec of one transformer layer."""
        if self.name == "gpu":
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            return get_gpt_layer_with_transformer_engine_spec()
        from workflow.train import cpu

        return cpu.layer_spec()

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

        from workflow.train.optimizer import ddp_config

        return DistributedDataParallel(gpt.config, ddp_config(self.distributed_optimizer), Float16Module(gpt.config, gpt))

    def optimizer_config(self, params: Params, branch: str | None = None):
        """megatron's OptimizerConfig of the trunk or a branch, with this backend's precision."""
        from workflow.train.optimizer import optimizer_config

        return optimizer_config(params, branch, bf16=self.name == "gpu", distributed_optimizer=self.distributed_optimizer)

    def optimizer(self, model: torch.nn.Module, params: Params, branch: str | None = None):
        """AdamW over megatron's param groups (`max_lr`/`min_lr` of the trunk or the branch on every group): megatron's
        optimizer on GPU, torch's on CPU (`cpu.CpuAdamW`)."""
        from workflow.train import optimizer as optim

        config = self.optimizer_config(params, branch)
        if self.name == "gpu":
            return optim.megatron_optimizer(model, config)
        from workflow.train.cpu import CpuAdamW

        return CpuAdamW(model, optim.param_groups(model, config), config)

    def zero_grad(self, model: torch.nn.Module, optimizer) -> None:
        if self.name == "gpu":
            model.zero_grad_buffer()
        optimizer.zero_grad()

    def finish_grads(self, model: torch.nn.Module) -> None:
        """After the last backward of a step: reduce gradients over data-parallel replicas (and the tied
        embedding's copies over pipeline stages)."""
        if self.name == "gpu":
            from megatron.core.distributed import finalize_model_grads

            finalize_model_grads([model])
            return
        from workflow.train import cpu

        cpu.finish_grads(model)


def resolve(model: Model) -> Backend:
    """The validated backend of `model` (see `validate`); on CPU, megatron's CUDA assumptions are shimmed."""
    if validate(model) == "gpu":
        return Backend("gpu", "nccl", gpu_config_kwargs(model), model.parallel.distributed_optimizer)
    from workflow.train import cpu

    cpu.install_shims()
    return Backend("cpu", "gloo", CPU_CONFIG_KWARGS)
