"""GPU smoke test: a few FP8 training steps of the GPU backend, with tokens/s and MFU.

    python bench/gpu_smoke.py [--recipe delayed] [--steps 20] [--hidden 1024] [--layers 8] [--seq 1024]

Needs a CUDA GPU with FP8 (compute capability 8.9+) and Transformer Engine; elsewhere it says why and
exits 0 without running (it cannot run on the CPU development machines). It trains the real `Session`
(Transformer Engine layer spec, bf16 `Float16Module`, FP8 recipe from the flags, megatron's DDP and
optimizer) on a synthetic corpus, times the steps after 3 warm-up steps, and prints tokens/s and MFU:
FLOPs/token (`workflow.train.model.flops_per_token`) x tokens/s over the bf16 `torch.mm` FLOP/s this GPU
measures (FP8 tensor cores peak about 2x higher, so the figure against FP8 peak is about half).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import Row, add_json_option, write_result  # noqa: E402
from bench.train import write_corpus  # noqa: E402


def bf16_matmul_flops(n: int = 8192, iters: int = 20) -> float:
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    torch.mm(a, b)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b)
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="delayed", choices=["delayed", "tensorwise", "blockwise", "mxfp8"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    add_json_option(parser)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():  # the reason on a CPU machine (backend.validate would name Transformer Engine first)
        print("gpu_smoke: not run: no CUDA device is visible (a CPU-only machine)")
        write_result(args.json, "gpu_smoke", [], skipped="no CUDA device is visible (a CPU-only machine)")
        return

    from workflow.params import parse_params
    from workflow.train import backend as be

    model = {"backend": "gpu", "num_layers": args.layers, "hidden_size": args.hidden, "num_attention_heads": args.heads,
             "num_query_groups": args.heads // 4, "seq_length": args.seq, "fp8": {"format": "hybrid", "recipe": args.recipe}}
    raw = {"sources": {"smoke": {"paths": ["unused/*.jsonl"], "domain": "smoke"}},
           "tokenizer": {"vocab_size": args.vocab, "eod_token": "<|endoftext|>"}, "model": model,
           "trunk": {"checkpoints": [args.steps], "global_batch_size": args.global_batch,
                     "micro_batch_size": args.micro_batch, "warmup_steps": 2}}
    params = parse_params(raw)
    try:
        be.validate(params.model)
    except be.BackendError as err:
        print(f"gpu_smoke: not run: {err}")
        write_result(args.json, "gpu_smoke", [], skipped=str(err))
        return

    from workflow.train.loop import Session
    from workflow.shapes import flops_per_token

    work = Path(tempfile.mkdtemp(prefix="arbor-gpu-smoke-"))
    os.chdir(work)
    try:
        tokens_per_step = args.global_batch * args.seq
        write_corpus(work, args.vocab, tokens=tokens_per_step * (args.steps + 1))
        session = Session(params)
        for _ in range(3):
            session.train_step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        losses = [session.train_step()["loss"] for _ in range(args.steps - 3)]
        torch.cuda.synchronize()
        rate = tokens_per_step * len(losses) / (time.perf_counter() - start)
        assert all(math.isfinite(x) for x in losses), losses
        peak = bf16_matmul_flops()
        fpt = flops_per_token(params.model, args.vocab)
        print(f"{torch.cuda.get_device_name()}: FP8 {args.recipe}, {args.layers} layers x {args.hidden}, seq {args.seq}: "
              f"{rate:,.0f} tokens/s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        print(f"MFU: {fpt / 1e9:.2f} GFLOP/token x {rate:,.0f} tokens/s = {fpt * rate / 1e12:.1f} TFLOP/s over measured "
              f"bf16 matmul {peak / 1e12:.0f} TFLOP/s = {100 * fpt * rate / peak:.1f}%")
        setup = f"{torch.cuda.get_device_name()}, FP8 {args.recipe}, {args.layers} layers x {args.hidden}, seq {args.seq}"
        write_result(args.json, "gpu_smoke", [
            Row(f"GPU training ({setup})", rate, "tok/s", note=f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"),
            Row("GPU MFU", 100 * fpt * rate / peak, "% of bf16 matmul", note=f"matmul {peak / 1e12:.0f} TFLOP/s")])
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
