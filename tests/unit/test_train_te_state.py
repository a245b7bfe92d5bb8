"""Transformer Engine's `_extra_state` (a pickle in a uint8 tensor that TE's `set_extra_state` gives to
`pickle.loads`): a forged payload is refused before anything unpickles it; what TE writes passes. TE is not
needed: the payloads are crafted here, TE's recipe classes stood in by a module of the same name."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pickle
import sys
import types
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from workflow.io import atomic_dir
from workflow.train import checkpoint as ckpt
from workflow.train import te_state

MARKER = Path("pwned")  # relative: the test's cwd is a tmp dir


def pwn() -> None:
    """What a forged payload runs when unpickled (TE's `set_extra_state` would call it)."""
    MARKER.write_text("code ran")


class Forged:
    def __reduce__(self):
        return pwn, ()


def as_tensor(payload: bytes) -> torch.Tensor:
    """What TE's `get_extra_state` stores: the pickle's bytes as a uint8 tensor."""
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8)


@contextlib.contextmanager
def te_recipe_module():
    """`transformer_engine.common.recipe` as far as pickling needs it (DelayedScaling, Format, _FormatHelper), in
    `sys.modules` only while payloads are written (megatron must not take it for an installed TE)."""
    module = types.ModuleType(te_state.RECIPE_MODULE)

    class _FormatHelper(NamedTuple):
        max_fwd: float
        max_bwd: float

    class Format(enum.Enum):
        E4M3 = _FormatHelper(max_fwd=448, max_bwd=448)
        HYBRID = _FormatHelper(max_fwd=448, max_bwd=57344)

    @dataclasses.dataclass
    class DelayedScaling:
        margin: int = 0
        fp8_format: Format = Format.HYBRID
        amax_history_len: int = 1024
        amax_compute_algo: object = "max"
        reduce_amax: bool = True

    for cls in (_FormatHelper, Format, DelayedScaling):
        cls.__module__, cls.__qualname__ = te_state.RECIPE_MODULE, cls.__name__
        setattr(module, cls.__name__, cls)
    names = ("transformer_engine", "transformer_engine.common", te_state.RECIPE_MODULE)
    assert not any(name in sys.modules for name in names), "Transformer Engine is installed here"
    sys.modules.update({name: types.ModuleType(name) for name in names[:2]} | {te_state.RECIPE_MODULE: module})
    try:
        yield module
    finally:
        for name in names:
            sys.modules.pop(name, None)


def genuine_payload(**recipe) -> bytes:
    """The dict TE's `get_extra_state` pickles for a delayed-scaling layer."""
    with te_recipe_module() as recipes:
        return pickle.dumps({"recipe": recipes.DelayedScaling(**recipe),
                             "scale_fwd": torch.ones(3), "amax_history_fwd": torch.zeros(16, 3),
                             "scale_bwd": torch.ones(2), "amax_history_bwd": torch.zeros(16, 2),
                             "extra_fp8_variables": {"num_gemms": 1, "fp8_checkpoint": True, "recipe_name": "x",
                                                     "autocast_key": (1, 2), "global_fp8_buffer_pos_fwd": [0]}})


def test_what_te_writes_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    te_state.check(genuine_payload())
    te_state.check(pickle.dumps(None))


def test_forged_payloads_are_refused_before_they_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forged = pickle.dumps({"recipe": Forged()})
    pickle.loads(forged)  # the payload is a real exploit for TE's plain pickle.loads ...
    assert MARKER.read_text() == "code ran"
    MARKER.unlink()
    with te_recipe_module() as recipes:
        forged_scale = pickle.dumps({"recipe": recipes.DelayedScaling(), "scale_fwd": Forged()})
    for payload, why in [
        (forged, "test_train_te_state.pwn"),  # ... refused here, before it runs
        (forged_scale, "test_train_te_state.pwn"),
        (genuine_payload(amax_compute_algo=pwn), "pwn"),  # a callable recipe setting is code
        (pickle.dumps({"recipe": __import__("os").getcwd}), "posix.getcwd"),
        (pickle.dumps([1, 2]), "holds a list"),
        (b"\x80\x04garbage", "not a Transformer Engine extra state"),
    ]:
        with pytest.raises(te_state.ForgedExtraState, match=why):
            te_state.check(payload)
    assert not MARKER.exists()


def write_model_dir(directory: Path, extra_state: torch.Tensor) -> None:
    """A complete model dir whose first `_extra_state` sharded object holds `extra_state` (as a TE layer's would)."""
    from workflow.params import parse_params
    from workflow.train.loop import setup
    from workflow.train.model import build_model
    from tests.unit.conftest import train_params_dict

    params = parse_params(train_params_dict())
    backend, tokenizer = setup(params)
    model = build_model(params.model, backend, tokenizer.vocab_size)
    plain = model.sharded_state_dict

    def with_extra_state(*args, **kwargs):
        sharded = plain(*args, **kwargs)
        key = next(k for k in sharded if k.endswith("_extra_state"))
        sharded[key] = dataclasses.replace(sharded[key], data=extra_state)
        return sharded

    model.sharded_state_dict = with_extra_state
    with atomic_dir(directory) as tmp:
        ckpt.save(tmp, model, None, {}, {"model_id": "merge-x", "kind": "merge", "fingerprint": "-"}, [])


def test_checkpoint_with_forged_extra_state_is_refused_on_load(train_study):
    from workflow.params import parse_params
    from workflow.train.loop import setup
    from workflow.train.model import build_model
    from tests.unit.conftest import train_params_dict

    write_model_dir(Path("forged"), as_tensor(pickle.dumps({"recipe": Forged()})))
    write_model_dir(Path("genuine"), as_tensor(genuine_payload()))
    params = parse_params(train_params_dict())
    backend, tokenizer = setup(params)
    model = build_model(params.model, backend, tokenizer.vocab_size)
    with pytest.raises(ckpt.CheckpointError, match=r"forged/checkpoint/.*_extra_state.*refusing its Transformer Engine "
                                                   r"extra state .*test_train_te_state\.Forged|test_train_te_state\.pwn"):
        ckpt.load("forged", model)
    assert not MARKER.exists()
    ckpt.load("genuine", model)  # TE's own state loads (the local layers ignore it)
