"""What a study costs, from params.yaml alone: parameters, tokens, training FLOPs, GPU-hours, storage.

FLOPs per trained token are `shapes.flops_per_token` (3x the forward matmuls, attention counted in full,
the PaLM / Megatron MFU convention). GPU-hours divide by
the accelerator's dense peak (bf16, or FP8 with `model.fp8`) times the MFU the user expects. Checkpoint bytes
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
    """One trained run of a study: the trunk or a decay branch."""
    name: str
    steps: int
    tokens: int
    flops: float


def runs(params: Params) -> list[Run]:
    """The trunk to its last checkpoint (trained once), then every decay branch's own steps."""
    per_step = params.trunk.global_batch_size * params.model.seq_length
    per_token = flops_per_token(params.model, params.tokenizer.vocab_size)
    steps = {"trunk": params.trunk.checkpoints[-1], **{f"decay-{b}": d.total_steps for b, d in params.decays.items()}}
    return [Run(name, n, n * per_step, n * per_step * per_token) for name, n in steps.items()]


def checkpoint_bytes(params: Params, backend: str, merges: bool = True) -> int:
    """Bytes of the study's model directories on `backend`: trunk checkpoints and decays with optimizer state,
    merges (unless `merges` is false) without."""
    total = parameters(params.model, params.tokenizer.vocab_size)
    weights, optimizer = CHECKPOINT_BYTES[backend]
    with_state = len(params.trunk.checkpoints) + len(params.decays)
    return total * ((weights + optimizer) * with_state + (weights * len(params.merges) if merges else 0))


def gpu_hours(flops: float, accelerator: str, mfu: float, fp8: bool) -> float:
    peak = ACCELERATORS[accelerator][1 if fp8 else 0] * 1e12
    return flops / (peak * mfu) / 3600


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def estimate(params: Params, accelerator: str = "h100", mfu: float = 0.4) -> list[str]:
    """The lines `python -m workflow check` prints."""
    fp8 = params.model.fp8 is not None
    total = parameters(params.model, params.tokenizer.vocab_size)
    trained = runs(params)
    study = sum(r.flops for r in trained)
    lines = [f"model:    {human(total)} parameters, {human(flops_per_token(params.model, params.tokenizer.vocab_size))}"
             f"FLOPs per trained token",
             f"cost at {mfu:.0%} MFU on {accelerator.upper()} ({'FP8' if fp8 else 'bf16'} peak):"]
    for r in [*trained, Run("study", sum(r.steps for r in trained), sum(r.tokens for r in trained), study)]:
        lines.append(f"  {r.name:<20} {r.steps:>8} steps {human(r.tokens):>9} tokens {human(r.flops, 'FLOP'):>11}"
                     f" {gpu_hours(r.flops, accelerator, mfu, fp8):>10.3g} GPU-h")
    lines.append(f"storage:  {human(checkpoint_bytes(params, 'gpu'), 'B')} of model directories on GPU "
                 f"({human(checkpoint_bytes(params, 'cpu'), 'B')} on CPU, fp32)")
    return lines


def versus(params: Params, tokens: int, checkpoint_files: int, backend: str) -> str:
    """The report's sentence: what was trained and stored against what `check` estimated before the run."""
    planned = sum(r.tokens for r in runs(params))
    stored = checkpoint_bytes(params, backend, merges=False)
    return (f"Estimate vs measured: {human(planned)} tokens planned, {human(tokens)} trained "
            f"({tokens / planned:.2f}×); {human(stored, 'B')} of trunk and decay checkpoints planned, "
            f"{human(checkpoint_files, 'B')} written ({checkpoint_files / stored:.2f}×, {backend}).")
