"""Transformer Engine's `_extra_state`: a pickle inside a uint8 tensor, checked before anything unpickles it.

On the GPU backend every TE layer saves its FP8 metadata as `_extra_state`. TE's `get_extra_state`
(`transformer_engine/pytorch/module/base.py`) pickles a dict into a uint8 tensor, and its
`set_extra_state` gives those bytes to `pickle.loads` when a checkpoint is loaded (TE >= 2.18 refuses
unless `NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE=1`; earlier versions just unpickle). Our weights-only load of
the checkpoint only sees a harmless uint8 tensor, so the pickle inside it is checked here.

What TE writes: `{"recipe": <FP8 recipe>, "scale_fwd", "amax_history_fwd", "scale_bwd",
"amax_history_bwd": CPU tensors (delayed scaling), "extra_fp8_variables": {str: bool/int/float/str/
tuple/list}}`; the recipe is a `transformer_engine.common.recipe` dataclass (`DelayedScaling`, ...) with
a `Format` enum (its value a `_FormatHelper` named tuple) and `QParams`/`MMParams` settings. `check`
unpickles a payload with exactly those globals allowed: TE's classes become inert stand-ins (TE need not
be installed, nothing of TE runs), tensors are rebuilt from storages loaded weights-only. Anything else —
a function, a callable recipe setting, `os.system` — is refused before TE ever sees the bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterator

import torch

RECIPE_MODULE = "transformer_engine.common.recipe"
RECIPE_TYPES = {"DelayedScaling", "Float8CurrentScaling", "MXFP8BlockScaling", "Float8BlockScaling",
                "NVFP4BlockScaling", "Format", "_FormatHelper", "MMParams", "QParams"}
TE_UNSAFE_PICKLE_ENV = "NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE"


class ForgedExtraState(pickle.UnpicklingError):
    """A payload that is not what Transformer Engine writes."""


class _StandIn:
    """An inert stand-in for one of TE's recipe types: takes any arguments and state, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state


def _storage_weights_only(data: bytes):
    """torch pickles a tensor's storage as `torch.storage._load_from_bytes(<torch.save bytes>)`, which would
    `torch.load` them with `weights_only=False`; here they are loaded weights-only."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_STAND_INS = {name: type(name, (_StandIn,), {}) for name in RECIPE_TYPES}
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_weights_only,
    ("collections", "OrderedDict"): OrderedDict,
    **{(RECIPE_MODULE, name): cls for name, cls in _STAND_INS.items()},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForgedExtraState(f"global '{module}.{name}' is not part of Transformer Engine's extra state") from None

    def persistent_load(self, pid):
        raise ForgedExtraState("persistent ids are not part of Transformer Engine's extra state")


def check(payload: bytes) -> None:
    """Raise ForgedExtraState unless `payload` (the bytes of an `_extra_state` tensor) unpickles to what TE
    writes, using only the allowed globals (see the module docstring)."""
    try:
        state = _Unpickler(io.BytesIO(payload)).load()
    except ForgedExtraState:
        raise
    except Exception as err:  # truncated, corrupt, or refused by the weights-only storage load
        raise ForgedExtraState(f"not a Transformer Engine extra state ({type(err).__name__}: {err})") from None
    if state is not None and not isinstance(state, dict):
        raise ForgedExtraState(f"holds a {type(state).__name__}, Transformer Engine writes a dict")


def payloads(obj) -> Iterator[bytes]:
    """The pickle bytes TE would unpickle from a loaded `_extra_state` object (dist_checkpointing stores each
    in a list): one per non-empty tensor; none for empty tensors or None (the local layer spec's layers, TE's
    stateless recipes)."""
    if isinstance(obj, torch.Tensor):
        if obj.numel() > 0:
            yield obj.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from payloads(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from payloads(item)


@contextlib.contextmanager
def checked_payloads_loadable() -> Iterator[None]:
    """While loading a checkpoint whose extra states `check` has passed: let TE >= 2.18 unpickle its own
    delayed-scaling state (it refuses by default, not knowing the payload was checked)."""
    before = os.environ.get(TE_UNSAFE_PICKLE_ENV)
    os.environ[TE_UNSAFE_PICKLE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TE_UNSAFE_PICKLE_ENV, None)
        else:
            os.environ[TE_UNSAFE_PICKLE_ENV] = before
