"""megatron-core's import without TorchDynamo: `torch.compile` decorations are deferred to the first call."""

from __future__ import annotations

import torch

from workflow import mcore


def test_deferred_compiles_on_the_first_call_only_with_the_options_given():
    compiled = []

    def fake_compile(fn, **options):
        compiled.append((fn.__name__, options))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    compile_later = mcore.deferred(fake_compile)

    @compile_later
    def twice(x):
        return 2 * x

    @compile_later(mode="max-autotune", dynamic=False)
    def square(x):
        """Squares."""
        return x * x

    assert compiled == [] and twice.__name__ == "twice" and square.__doc__ == "Squares."
    assert twice(3) == ("compiled", 6) and twice(4) == ("compiled", 8)
    assert square(3) == ("compiled", 9)
    assert compiled == [("twice", {}), ("square", {"mode": "max-autotune", "dynamic": False})]


def test_deferred_real_torch_compile_gives_the_eager_result():
    def gelu_tanh(x):
        return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))

    x = torch.linspace(-3, 3, 64)
    fused = mcore.deferred(torch.compile)(gelu_tanh, backend="eager")
    assert torch.equal(fused(x), gelu_tanh(x))
