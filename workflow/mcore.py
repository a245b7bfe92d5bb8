"""megatron-core, imported lightly by every job that builds a model (`loop.setup`: trunk, decay, merge, evaluate).

megatron-core decorates its fused kernels with `torch.compile` when it is imported (`megatron/core/jit.py`:
`jit_fuser = torch.compile`), and each decoration imports TorchDynamo and Inductor: about 1.7 CPU-s of a job's
start (1 s where torch.optim imports TorchDynamo anyway), for kernels a CPU job never calls. `load()` imports megatron-core with those decorations deferred: a
kernel is handed to the real `torch.compile` on its first call, which is when `torch.compile` compiles anyway,
so a GPU job compiles the same kernels with the same options.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


def deferred(compile_: Callable[..., Any]) -> Callable[..., Any]:
    """`torch.compile` with the decoration deferred to the first call (decorator and direct forms)."""

    def compile_later(model: Callable[..., Any] | None = None, **options: Any) -> Callable[..., Any]:
        if model is None:  # @torch.compile(...)
            return lambda fn: compile_later(fn, **options)
        compiled: Callable[..., Any] | None = None

        @functools.wraps(model)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = compile_(model, **options)
            return compiled(*args, **kwargs)

        return call

    return compile_later


def load() -> None:
    """Import megatron.core (once per process) with its `torch.compile` decorations deferred, and its indexed
    datasets without boto3 (0.5 s): megatron-core imports it for datasets on S3, and arbor's token files are
    local artifacts (remote sources are read by curation)."""
    if "megatron.core" in sys.modules:
        return
    import torch

    real = torch.compile
    torch.compile = deferred(real)
    skip_boto3 = "boto3" not in sys.modules
    if skip_boto3:
        sys.modules["boto3"] = None  # `import boto3` raises ModuleNotFoundError, which megatron-core expects
    try:
        import megatron.core  # noqa: F401
        import megatron.core.datasets.indexed_dataset  # noqa: F401
    finally:
        torch.compile = real
        if skip_boto3:
            del sys.modules["boto3"]
