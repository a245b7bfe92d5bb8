"""Training throughput: arbor's `trunk` stage against a bare loop of the same megatron model, and MFU.

    .venv/bin/python bench/train.py [--steps 50] [--repeats 3] [--hidden 256] [--layers 4] [--seq 128]

In one process, on one synthetic corpus (random token ids in a megatron `.bin/.idx`, so no upstream
stage is needed), each repeat runs, alternating their order:

  (a) arbor: `stages.call(params, "trunk", trunk="main", step=N)` (workflow/stages.py) end to end — process setup, model build, the
      `GPTDataset` stream, per-step logging, an intermediate checkpoint every `--save-interval` steps,
      the final checkpoint with `train_log.jsonl` and dvclive curves;
  (b) bare: the same megatron `GPTModel` (same spec, init and batch shape), one global batch already in
      memory, micro-batch gradient accumulation, torch AdamW + `clip_grad_norm_`; no scheduler, no
      logging, no checkpointing;

then `--steps` steps alternating one `Session.train_step` (trunk's loop) and one bare step, so both see
the same load on a shared machine (the end-to-end runs are minutes apart), plus one checkpoint save.

It prints tokens/s of both (per wall second, and per CPU second of this process and its checkpoint-writer
children, which a shared machine disturbs less), their medians and the ratio (a)/(b) (target: overhead
<= 3%, ratio >= 0.97),
and an MFU estimate: FLOPs/token (`workflow.train.model.flops_per_token`) x tokens/s over the matmul
FLOP/s this machine measures (fp32 `torch.mm`, same thread count).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds `tokenize.py`, named like the stdlib module: take bench/ off the import path, put the repo on it.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import Row, add_json_option, write_result  # noqa: E402

EOD = "<|endoftext|>"


def write_corpus(root: Path, vocab: int, tokens: int, seed: int = 0) -> None:
    """A word-level tokenizer of `vocab` ids and one domain of random documents (`artifacts/` layout)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer, models

    (root / "artifacts/tokenizer").mkdir(parents=True)
    words = {EOD: 0} | {f"w{i}": i for i in range(1, vocab)}
    Tokenizer(models.WordLevel(words, unk_token="w1")).save(str(root / "artifacts/tokenizer/tokenizer.json"))
    (root / "artifacts/tokens").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(root / "artifacts/tokens/bench.bin"), dtype=np.uint16)
    written = 0
    while written < tokens:
        doc = np.append(rng.integers(1, vocab, int(rng.integers(100, 2000))), 0)
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
        written += len(doc)
    builder.finalize(str(root / "artifacts/tokens/bench.idx"))
    stats = {"train": {"tokens": written, "documents": 0, "bytes": 0}}
    (root / "artifacts/tokens/bench.stats.json").write_text(json.dumps(stats))


def study(args: argparse.Namespace):
    from workflow.params import parse_params

    return parse_params(study_raw(args))


def study_raw(args: argparse.Namespace) -> dict:
    """The bench study as params.yaml holds it."""
    return {
        "sources": {"bench": {"paths": ["unused/*.jsonl"], "domain": "bench"}},
        "tokenizer": {"vocab_size": args.vocab, "eod_token": EOD},
        "model": {"backend": "cpu", "num_layers": args.layers, "hidden_size": args.hidden, "num_attention_heads": args.heads,
                  "num_query_groups": args.heads // 2, "seq_length": args.seq},
        "trunk": {"checkpoints": [args.steps], "global_batch_size": args.global_batch, "micro_batch_size": args.micro_batch,
                  "warmup_steps": 5, "save_interval": args.save_interval, "log_interval": 10},
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the checkpoint writers): less sensitive than
    wall time to other jobs on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, params) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `fn(params)`."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn(params)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def run_trunk(params) -> None:
    """`trunk --step N` (in this process), from scratch."""
    from workflow import paths, stages

    shutil.rmtree(paths.ARTIFACTS + "/trunk", ignore_errors=True)
    stages.call(params, "trunk", trunk="main", step=params.trunk.checkpoints[-1])


class BareLoop:
    """The same model (spec, init, batch shape) trained on one in-memory global batch: micro-batch gradient
    accumulation, torch AdamW + `clip_grad_norm_`; no scheduler, no logging, no checkpointing."""

    def __init__(self, params) -> None:
        import torch

        from workflow.train import distributed
        from workflow.train.loop import setup
        from workflow.train.model import build_model

        self.t, m = params.trunk, params.model
        backend, tok = setup(params, params.model.parallel)
        distributed.seed_everything(backend, self.t.seed)
        self.model = build_model(m, backend, tok.vocab_size)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.t.lr, weight_decay=self.t.weight_decay,
                                           betas=(self.t.adam_beta1, self.t.adam_beta2), eps=self.t.adam_eps, foreach=True)
        data = torch.randint(1, tok.vocab_size, (self.t.global_batch_size, m.seq_length + 1))
        # contiguous micro batches, like the trunk's stream (strided views make megatron's forward ~60% slower)
        self.micro = [(data[i:i + self.t.micro_batch_size, :-1].contiguous(), data[i:i + self.t.micro_batch_size, 1:].contiguous())
                      for i in range(0, self.t.global_batch_size, self.t.micro_batch_size)]
        self.positions = torch.arange(m.seq_length).unsqueeze(0).expand(self.t.micro_batch_size, -1).contiguous()
        self.total = self.t.global_batch_size * m.seq_length

    def step(self) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        for tokens, labels in self.micro:
            (self.model(tokens, self.positions, None, labels=labels).sum() / self.total).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
        self.optimizer.step()


def run_bare(params) -> None:
    """N optimizer steps of the bare loop (its construction is not timed by callers that care: it is ~0.3 s)."""
    loop = BareLoop(params)
    for _ in range(params.trunk.checkpoints[-1]):
        loop.step()


def interleaved_steps(params, steps: int) -> tuple[list[float], list[float], float]:
    """Per-step seconds of trunk's `Session.train_step` (data stream, scheduler, clipping, log row) and of
    the bare loop, alternating one step each so both see the same machine load; and one checkpoint save."""
    from workflow.train.loop import Session

    session, bare = Session(params), BareLoop(params)
    trunk_times, bare_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        session.train_step()
        trunk_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare.step()
        bare_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    session.save("artifacts/.scratch/bench", session.meta("bench", "trunk", "-", {}))
    return trunk_times, bare_times, time.perf_counter() - start


def matmul_flops(n: int = 1024, seconds: float = 3.0) -> float:
    """Sustained fp32 `torch.mm` FLOP/s (the best of 5 timed bursts)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--save-interval", type=int, default=25)
    add_json_option(parser)
    args = parser.parse_args()

    import torch

    from workflow.train.distributed import set_threads
    from workflow.shapes import flops_per_token

    set_threads()
    work = Path(tempfile.mkdtemp(prefix="arbor-bench-train-"))
    os.chdir(work)
    try:
        params = study(args)
        tokens_per_step = params.trunk.global_batch_size * params.model.seq_length
        write_corpus(work, args.vocab, tokens=tokens_per_step * args.steps * 2)
        tokens = tokens_per_step * args.steps
        print(f"model: {args.layers} layers, hidden {args.hidden}, seq {args.seq}, vocab {args.vocab}; "
              f"{args.steps} steps x {tokens_per_step} tokens; {torch.get_num_threads()} threads; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        run_bare(params.model_copy(update={"trunk": params.trunk.model_copy(update={"checkpoints": [2]})}))  # warm-up
        rates: dict[str, list[float]] = {"trunk": [], "bare": []}
        cpu_rates: dict[str, list[float]] = {"trunk": [], "bare": []}
        for r in range(args.repeats):
            order = ("trunk", "bare") if r % 2 == 0 else ("bare", "trunk")
            for name in order:
                wall, cpu = timed(run_trunk if name == "trunk" else run_bare, params)
                rates[name].append(tokens / wall)
                cpu_rates[name].append(tokens / cpu)
                print(f"repeat {r + 1} {name:5s}: {tokens / wall:10,.0f} tokens/s ({wall:.1f}s wall), "
                      f"{tokens / cpu:10,.0f} tokens/CPU-s ({cpu:.1f} CPU-s); load {os.getloadavg()[0]:.1f}", flush=True)
        trunk_s, bare_s, save_s = interleaved_steps(params, args.steps)
        step_ratio = statistics.median(bare_s) / statistics.median(trunk_s)
        amortized = save_s / params.trunk.save_interval / statistics.median(trunk_s)
        print(f"interleaved steps: median trunk step {statistics.median(trunk_s):.3f}s, bare {statistics.median(bare_s):.3f}s, "
              f"ratio {step_ratio:.3f} (loop overhead {100 * (1 - step_ratio):.1f}%); one save {save_s:.2f}s = "
              f"{100 * amortized:.1f}% of the steps between saves (save_interval {params.trunk.save_interval})")
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu_rates.items()}
        ratio, cpu_ratio = med["trunk"] / med["bare"], cpu_med["trunk"] / cpu_med["bare"]
        peak = matmul_flops()
        fpt = flops_per_token(params.model, args.vocab)
        print(f"median tokens/s: trunk {med['trunk']:,.0f}, bare {med['bare']:,.0f}; "
              f"ratio trunk/bare {ratio:.3f} (overhead {100 * (1 - ratio):.1f}%, target <= 3%)")
        print(f"median tokens/CPU-s: trunk {cpu_med['trunk']:,.0f}, bare {cpu_med['bare']:,.0f}; "
              f"ratio {cpu_ratio:.3f} (overhead {100 * (1 - cpu_ratio):.1f}%)")
        print(f"MFU: {fpt / 1e6:.1f} MFLOP/token x {med['trunk']:,.0f} tokens/s = {fpt * med['trunk'] / 1e9:.2f} GFLOP/s "
              f"over measured fp32 matmul {peak / 1e9:.1f} GFLOP/s = {100 * fpt * med['trunk'] / peak:.1f}% "
              f"(bare loop {100 * fpt * med['bare'] / peak:.1f}%); load {os.getloadavg()[0]:.1f}")
        model = f"{args.layers} layers x {args.hidden}, seq {args.seq}"
        write_result(args.json, "train", [
            Row(f"training end to end, trunk stage ({model})", med["trunk"], "tok/s", "bare megatron loop", med["bare"],
                ratio, ">= 0.97", note=f"per CPU second {cpu_ratio:.3f}; includes setup and checkpoints"),
            Row("training step, trunk loop (interleaved steps)", statistics.median(trunk_s), "s/step", "bare loop step",
                statistics.median(bare_s), step_ratio, ">= 0.97",
                note=f"one save = {100 * amortized:.1f}% of the steps between saves"),
            Row("training MFU, trunk stage (CPU)", 100 * fpt * med["trunk"] / peak, "% of fp32 matmul",
                note=f"bare loop {100 * fpt * med['bare'] / peak:.1f}%; matmul {peak / 1e9:.1f} GFLOP/s")])
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
