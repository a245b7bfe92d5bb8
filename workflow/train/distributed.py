"""Processes: this rank's device, the process group and megatron's parallel groups, per-rank RNG state."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping

import torch

from workflow.errors import StageError
from workflow.params import Parallel


class LayoutError(StageError):
    """The processes do not match `model.parallel`; the message says what to change."""


def local_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 for a single process)."""
    return int(env.get("LOCAL_RANK", 0))


def local_device(backend: str, env: Mapping[str, str] = os.environ) -> torch.device:
    """The device a rank of `backend` computes on: `cuda:<LOCAL_RANK>` (one GPU per rank on each node) or the CPU."""
    return torch.device("cuda", local_rank(env)) if backend == "gpu" else torch.device("cpu")


def set_threads() -> None:
    """`ARBOR_THREADS` caps intra-op threads (parallel Snakemake jobs and torchrun ranks share the cores)."""
    if os.environ.get("ARBOR_THREADS"):
        torch.set_num_threads(int(os.environ["ARBOR_THREADS"]))


def init(backend, parallel: Parallel | None) -> None:
    """Select this rank's GPU, start the process group and megatron's model-parallel groups.

    Under torchrun (RANK/WORLD_SIZE set) the env:// rendezvous is used. A plain single process uses a
    file store in a private temp dir, so concurrent jobs never fight over a port. `parallel` is the
    training layout (world = nproc_per_node * nodes = tp * pp * dp); None = one process, tp = pp = 1
    (evaluation and merges load any checkpoint, which reshards).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    if backend.name == "gpu":
        torch.cuda.set_device(backend.device)  # before anything touches CUDA: the device follows LOCAL_RANK
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend.dist_backend)
        else:
            store_dir = tempfile.mkdtemp(prefix="arbor-pg-")
            atexit.register(shutil.rmtree, store_dir, True)
            store = dist.FileStore(os.path.join(store_dir, "store"), 1)
            dist.init_process_group(backend.dist_backend, store=store, rank=0, world_size=1)
    world = dist.get_world_size()
    tp, pp = (parallel.tp, parallel.pp) if parallel else (1, 1)
    if parallel is not None and world != parallel.nproc_per_node * parallel.nodes:
        raise LayoutError(f"{world} processes but model.parallel asks for nproc_per_node * nodes = "
                          f"{parallel.nproc_per_node * parallel.nodes}; run the stage through `python -m workflow`, "
                          "which launches torchrun itself")
    if world % (tp * pp):
        raise LayoutError(f"world size {world} is not a multiple of tp * pp = {tp * pp}")
    if parallel_state.model_parallel_is_initialized():
        current = (parallel_state.get_tensor_model_parallel_world_size(),
                   parallel_state.get_pipeline_model_parallel_world_size())
        if current == (tp, pp):
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)


def layout() -> dict[str, int]:
    """The running process layout: world size and megatron's tp, pp and data-parallel sizes."""
    from megatron.core import parallel_state

    return {"world": torch.distributed.get_world_size(), "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size()}


def data_parallel() -> tuple[int, int]:
    """(rank, size) of this process among the data-parallel replicas."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def data_parallel_group():
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def seed_everything(backend, seed: int) -> None:
    """Seed torch (and megatron's CUDA RNG tracker on GPU)."""
    torch.manual_seed(seed)
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def _own_rng_state(backend) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if backend.name == "gpu":
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["cuda"] = torch.cuda.get_rng_state()
        state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def rng_state(backend) -> list[dict]:
    """The RNG states of every model-parallel (TP x PP) rank, in rank order, the same list on all ranks (it is
    the checkpoint's common state): pipeline stages draw different numbers (their own layers' weights and
    dropout), and so do the tensor-parallel ranks' CUDA trackers."""
    from megatron.core import parallel_state

    group = parallel_state.get_model_parallel_group()
    states: list = [None] * group.size()
    torch.distributed.all_gather_object(states, _own_rng_state(backend), group=group)
    return states


def set_rng_state(backend, states: list[dict] | dict) -> None:
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
