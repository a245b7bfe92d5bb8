"""What a study costs, from params.yaml alone: parameters, tokens, training FLOPs, GPU-hours, storage.

FLOPs per trained token are `shapes.flops_per_token` (3x the forward matmuls, attention counted in full,
the PaLM / Megatron MFU convention). GPU-hours divide by
the accelerator's dense peak (bf16, or FP8 with the trunk's `model.fp8`) times the MFU the user expects. Checkpoint bytes
per parameter are those arbor's checkpoints hold: weights + fp32 Adam moments (+ fp32 main weights on GPU),
weights alone for a merge.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow.params import Params
from workflow.shapes import flops_per_token, parameters

# Dense peak TFLOP/s per accelerator (vendor data sheets, no sparsity): (bf16, fp8).
ACCELERATORS = {
    "a100": (312.0, 312.0),      # no FP8: FP8 runs at the bf16 rate
    "h100": (989.0, 1979.0),     # SXM
    "h200": (989.0, 1979.0),
    "b200": (2250.0, 4500.0),
    "mi300x": (1307.0, 2615.0),
}
# Bytes per parameter in one checkpoint: (weights, optimizer state), on each backend.
CHECKPOINT_BYTES = {"cpu": (4, 8), "gpu": (2, 12)}  # fp32 weights + 2 fp32 moments | bf16 + fp32 main + 2 moments


@dataclass(frozen=True)
class Run:
    """One trained run of a study: a trunk (to its last checkpoint) or a decay branch, in its trunk's shape."""
    name: str
    steps: int
    tokens: int
    flops: float
    fp8: bool


def _run(params: Params, name: str, trunk: str, steps: int) -> Run:
    t = params.trunks[trunk]
    per_step = t.global_batch_size * t.model.seq_length
    per_token = flops_per_token(t.model, params.tokenizer.vocab_size)
    return Run(name, steps, steps * per_step, steps * per_step * per_token, t.model.fp8 is not None)


def runs(params: Params) -> list[Run]:
    """Each trunk to its last checkpoint (trained once; named by that checkpoint's id), then every decay
    branch's own steps (re-warm + anneal) in its parent trunk's shape and batch."""
    return ([_run(params, f"{name}@{t.checkpoints[-1]}", name, t.checkpoints[-1]) for name, t in params.trunks.items()]
            + [_run(params, f"decay-{b}", params.trunk_of(f"decay-{b}"), params.total_steps(b)) for b in params.decays])


def checkpoint_bytes(params: Params, backend: str, merges: bool = True) -> int:
    """Bytes of the study's model directories on `backend`: trunk checkpoints and decays with optimizer state,
    merges (unless `merges` is false) without; each in its trunk's shape."""
    weights, optimizer = CHECKPOINT_BYTES[backend]
    size = {name: parameters(t.model, params.tokenizer.vocab_size) for name, t in params.trunks.items()}
    with_state = sum(size[name] * len(t.checkpoints) for name, t in params.trunks.items()) + \
        sum(size[params.trunk_of(f"decay-{b}")] for b in params.decays)
    merged = sum(size[params.trunk_of(f"merge-{m}")] for m in params.merges) if merges else 0
    return (weights + optimizer) * with_state + weights * merged


def gpu_hours(flops: float, accelerator: str, mfu: float, fp8: bool) -> float:
    peak = ACCELERATORS[accelerator][1 if fp8 else 0] * 1e12
    return flops / (peak * mfu) / 3600


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def estimate(params: Params, accelerator: str = "h100", mfu: float = 0.4) -> list[str]:
    """The lines `python -m workflow check` prints: each model shape (and its trunks), then one row per trunk, per
    decay (in its trunk's shape) and for the study."""
    vocab = params.tokenizer.vocab_size
    shapes: dict[str, list[str]] = {}  # one line per model shape, naming its trunks when the study has several
    for name, t in params.trunks.items():
        shapes.setdefault(f"{human(parameters(t.model, vocab))} parameters, "
                          f"{human(flops_per_token(t.model, vocab))}FLOPs per trained token", []).append(name)
    lines = [f"model:    {shape}" + (f" ({', '.join(names)})" if len(params.trunks) > 1 else "")
             for shape, names in shapes.items()]
    trained = runs(params)
    fp8 = {r.fp8 for r in trained}
    peak = "FP8" if fp8 == {True} else "bf16" if fp8 == {False} else "each trunk's bf16 or FP8"
    lines.append(f"cost at {mfu:.0%} MFU on {accelerator.upper()} ({peak} peak):")
    for r in trained:
        lines.append(_row(r.name, r.steps, r.tokens, r.flops, gpu_hours(r.flops, accelerator, mfu, r.fp8)))
    lines.append(_row("study", sum(r.steps for r in trained), sum(r.tokens for r in trained),
                      sum(r.flops for r in trained), sum(gpu_hours(r.flops, accelerator, mfu, r.fp8) for r in trained)))
    lines.append(f"storage:  {human(checkpoint_bytes(params, 'gpu'), 'B')} of model directories on GPU "
                 f"({human(checkpoint_bytes(params, 'cpu'), 'B')} on CPU, fp32)")
    return lines


def _row(name: str, steps: int, tokens: int, flops: float, hours: float) -> str:
    return f"  {name:<20} {steps:>8} steps {human(tokens):>9} tokens {human(flops, 'FLOP'):>11} {hours:>10.3g} GPU-h"


def versus(params: Params, tokens: int, checkpoint_files: int, backend: str) -> str:
    """The report's sentence: what was trained and stored against what `check` estimated before the run."""
    planned = sum(r.tokens for r in runs(params))
    stored = checkpoint_bytes(params, backend, merges=False)
    return (f"Estimate vs measured: {human(planned)} tokens planned, {human(tokens)} trained "
            f"({tokens / planned:.2f}×); {human(stored, 'B')} of trunk and decay checkpoints planned, "
            f"{human(checkpoint_files, 'B')} written ({checkpoint_files / stored:.2f}×, {backend}).")
