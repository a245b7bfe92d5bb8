"""GPU acceptance: the first run on a CUDA machine, one script, under 8 minutes.

    python bench/gpu_acceptance.py [--tolerance 0.1] [--keep DIR] [--json PATH]

1. installs what the `gpu` extra needs (Transformer Engine) when it is missing;
2. prepares the tiny study's data once on CPU (curate, tokenizer, tokenize, eval-tasks);
3. runs the study's training path on the GPU backend in bf16 and in FP8 (tensor-parallel 2 when two GPUs are
   visible): trunk -> decays -> merge -> evaluate (held-out loss + the local lm-eval tasks) -> export-hf;
4. trains the same trunk and decays on CPU (fp32) and compares the bf16 losses step by step: the largest
   difference must stay within `--tolerance` nats (bf16 rounding over 30 steps of a tiny model; a first
   bound, to tighten once measured);
5. checks the decays' LR: each ends at its final LR (`final_lr_ratio: 0.1`) and the re-warm climbs to its
   own `peak_lr` (the stages' preflight check already held every param group against params.yaml);
6. prints tokens/s of the GPU trunks and their MFU against the bf16 matmul FLOP/s this GPU measures, and runs
   `bench/gpu_smoke.py` (FP8, 8 layers x 1024) for an MFU of a model big enough to mean something.

Without CUDA it prints why it cannot run and exits 0 (`--rehearse-on-cpu` runs every step it can on the CPU
backend instead: bf16/FP8 become fp32, nothing is installed; it checks the script, not a GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from bench.common import Row, add_json_option, copy_repo, write_result  # noqa: E402

TINY = ROOT / "tests" / "configs" / "tiny" / "params.yaml"
TE_REQUIREMENT = "transformer-engine[pytorch]>=2.4"  # pyproject.toml's `gpu` extra
BUDGET_S = 8 * 60
REWARM_PEAK = 0.004


def study(backend: str, fp8: str | None, tp: int) -> dict:
    """The tiny study (tests/configs/tiny), with decays that exercise the LR fix: a final LR ratio and a re-warm."""
    raw = yaml.safe_load(TINY.read_text())
    raw.pop("trunks", None)  # one trunk, main (`trunk` with no --trunk trains it)
    raw["model"].update(backend=backend, fp8={"recipe": fp8, "format": "hybrid"} if fp8 else None)
    if tp > 1:
        raw["model"]["parallel"] = {"tp": tp, "nproc_per_node": tp}
    raw["decays"] = {
        "short": {"from": f"main@{12}", "steps": 6, "shape": "linear", "final_lr_ratio": 0.1},
        "late": {"from": f"main@{24}", "steps": 6, "shape": "cosine", "final_lr_ratio": 0.1,
                 "rewarm": {"steps": 2, "peak_lr": REWARM_PEAK}},
    }
    raw["merges"] = {"both": {"models": ["decay-short", "decay-late"]}}
    raw["eval"].update(tasks=["arbor_cloze", "arbor_heldout"], task_limit=32)
    return raw


def why_not(rehearse: bool) -> str | None:
    """Why this machine cannot run the acceptance (None: it can)."""
    import torch

    if rehearse:
        return None
    if not torch.cuda.is_available():
        return "no CUDA device is visible (a CPU-only machine); nothing to accept here"
    return None


def ensure_transformer_engine() -> str:
    """Import Transformer Engine, pip-installing the `gpu` extra's requirement first when it is missing."""
    from workflow.train.backend import have_te

    if have_te():
        return "already installed"
    print(f"installing {TE_REQUIREMENT} (the `gpu` extra) ...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", TE_REQUIREMENT], capture_output=True, text=True)
    if proc.returncode != 0 or subprocess.run([sys.executable, "-c", "import transformer_engine.pytorch"]).returncode:
        sys.exit(f"gpu_acceptance: cannot install {TE_REQUIREMENT}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return f"installed in {time.perf_counter() - start:.0f}s"


def stage(repo: Path, *argv: str, cpu_only: bool = False) -> str:
    """`python -m workflow <argv>` in `repo` (with `cpu_only`, no GPU visible: the CPU backend's shims apply);
    its stdout + stderr. Exits with the stage's output when it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-m", "workflow", *argv], cwd=repo, env=env, text=True, capture_output=True)
    if proc.returncode:
        sys.exit(f"gpu_acceptance: `python -m workflow {' '.join(argv)}` failed in {repo}:\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def prepare(work: Path) -> Path:
    """The tiny study's data (curated, tokenizer, tokens, local task data), made once on CPU."""
    base = copy_repo(work / "data", yaml.safe_dump(study("cpu", None, 1), sort_keys=False))
    stage(base, "dvc-yaml")
    sources = list(yaml.safe_load(TINY.read_text())["sources"])
    for source in sources:
        stage(base, "curate", "--source", source, cpu_only=True)
    stage(base, "tokenizer", cpu_only=True)
    for source in sources:
        stage(base, "tokenize", "--source", source, cpu_only=True)
    stage(base, "eval-tasks", cpu_only=True)
    return base


def variant(base: Path, work: Path, name: str, raw: dict) -> Path:
    repo = work / name
    shutil.copytree(base, repo, symlinks=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    stage(repo, "dvc-yaml")
    return repo


def train(repo: Path, raw: dict, everything: bool) -> dict:
    """Trunk and decays (and with `everything` the merge, every evaluation and an export); tokens/s of the trunk.
    A CPU-backend study runs with no GPU visible."""
    cpu = raw["model"]["backend"] == "cpu"
    out = stage(repo, "trunk", cpu_only=cpu)
    summaries = re.findall(r"[a-z0-9_-]+@\d+: \d+ steps .*?, ([\d,]+) tokens in ([\d.]+)s", out)
    tokens = sum(int(t.replace(",", "")) for t, _ in summaries)
    seconds = sum(float(s) for _, s in summaries)
    for branch in raw["decays"]:
        stage(repo, "decay", "--branch", branch, cpu_only=cpu)
    if everything:
        stage(repo, "merge", "--name", "both", cpu_only=cpu)
        models = [f"main@{s}" for s in raw["trunk"]["checkpoints"]] + [f"decay-{b}" for b in raw["decays"]] + ["merge-both"]
        for model in models:
            stage(repo, "evaluate", "--model", model, cpu_only=cpu)
        stage(repo, "export-hf", "--model", "decay-short", "--out", "hf/decay-short", cpu_only=cpu)
    return {"tokens_per_s": tokens / seconds if seconds else 0.0}


def losses(repo: Path, model_dir: str) -> list[float]:
    from workflow.train import checkpoint as ckpt

    return [row["loss"] for row in ckpt.read_log(repo / model_dir)]


def lr_checks(repo: Path, raw: dict) -> list[tuple[str, bool, str]]:
    """(check, passed, detail): each decay's last LR is its final LR, the re-warm's peaks at its own peak_lr."""
    from workflow import paths
    from workflow.params import parse_params
    from workflow.train import checkpoint as ckpt

    params = parse_params(raw)
    out = []
    for branch, d in params.decays.items():
        log = ckpt.read_log(repo / paths.decay_dir(branch))
        final, want = log[-1]["lr"], d.min_lr(params.trunk)
        out.append((f"decay-{branch} ends at its final LR", abs(final - want) <= 1e-9 * max(want, 1e-12),
                    f"{final:.6g} (params: {want:.6g})"))
        if d.rewarm:
            peak = log[d.rewarm_steps - 1]["lr"]
            out.append((f"decay-{branch} re-warms to its peak_lr", abs(peak - REWARM_PEAK) <= 1e-12,
                        f"{peak:.6g} (params: {REWARM_PEAK})"))
    return out


def matmul_flops(device: str) -> float:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start, iters = time.perf_counter(), 20
    for _ in range(iters):
        torch.mm(a, b)
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=0.1, help="largest |bf16 - fp32| loss difference, nats")
    parser.add_argument("--recipe", default="tensorwise", help="FP8 recipe (model.fp8.recipe)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir, removed)")
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="run the script's steps on the CPU backend")
    add_json_option(parser)
    args = parser.parse_args()

    reason = why_not(args.rehearse_on_cpu)
    if reason:
        print(f"gpu_acceptance: not run: {reason}")
        write_result(args.json, "gpu_acceptance", [], skipped=reason)
        return

    import torch

    from workflow import paths
    from workflow.params import parse_params
    from workflow.train.backend import fp8_problem
    from workflow.shapes import flops_per_token

    t0 = time.perf_counter()
    gpu = not args.rehearse_on_cpu
    device = "cuda" if gpu else "cpu"
    gpus = torch.cuda.device_count() if gpu else 0
    tp = 2 if gpus >= 2 else 1
    setup = ensure_transformer_engine() if gpu else "not needed (CPU rehearsal)"
    fp8 = args.recipe if gpu and not fp8_problem(args.recipe, torch.cuda.get_device_capability()) else None
    name = torch.cuda.get_device_name() if gpu else "CPU rehearsal"
    print(f"{name}: {gpus} GPU(s), TP={tp}; Transformer Engine {setup}; FP8 {fp8 or 'not run'}", flush=True)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="arbor-gpu-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    checks: list[tuple[str, bool, str]] = []
    rows: list[Row] = []
    try:
        base = prepare(work)
        print(f"data prepared ({time.perf_counter() - t0:.0f}s)", flush=True)
        backend = "gpu" if gpu else "cpu"
        runs = {"bf16": study(backend, None, tp)} | ({"fp8": study(backend, fp8, tp)} if fp8 else {})
        repos, rates = {}, {}
        for label, raw in runs.items():
            repos[label] = variant(base, work, label, raw)
            rates[label] = train(repos[label], raw, everything=True)["tokens_per_s"]
            checks += [(f"{label}: {c}", ok, d) for c, ok, d in lr_checks(repos[label], raw)]
            print(f"{label}: trunk -> decays -> merge -> evaluate -> export done ({time.perf_counter() - t0:.0f}s)", flush=True)
        if "fp8" in repos:
            final = {label: losses(repos[label], paths.trunk_dir("main", 24))[-1] for label in ("bf16", "fp8")}
            checks.append(("fp8 trunk trains (finite, within 0.5 nats of bf16 at step 24)",
                           abs(final["fp8"] - final["bf16"]) <= 0.5, f"{final['fp8']:.4f} vs {final['bf16']:.4f}"))
        cpu_raw = study("cpu", None, 1)
        cpu_repo = variant(base, work, "cpu", cpu_raw)
        train(cpu_repo, cpu_raw, everything=False)

        dirs = [paths.trunk_dir("main", s) for s in cpu_raw["trunk"]["checkpoints"]] + [paths.decay_dir(b) for b in cpu_raw["decays"]]
        worst = max(abs(a - b) for d in dirs for a, b in zip(losses(repos["bf16"], d), losses(cpu_repo, d)))
        checks.append((f"bf16 losses within {args.tolerance} nats of the CPU (fp32) run", worst <= args.tolerance,
                       f"largest difference {worst:.4f} nats over the trunk and both decays"))
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(base / paths.tokenizer_file())).get_vocab_size()
        per_token, peak = flops_per_token(parse_params(runs["bf16"]).model, vocab), matmul_flops(device)
        for label, rate in rates.items():
            mfu = 100 * per_token * rate / peak
            print(f"{label} trunk: {rate:,.0f} tokens/s, MFU {mfu:.2f}% of the measured "
                  f"{'bf16' if gpu else 'fp32'} matmul {peak / 1e12:.1f} TFLOP/s (a tiny model: a launch-bound figure)")
            rows += [Row(f"GPU acceptance, tiny study trunk, {label} ({name}, TP={tp})", rate, "tok/s", note=f"MFU {mfu:.2f}%")]
        if gpu:
            smoke = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--recipe", fp8 or "delayed"],
                                   capture_output=True, text=True, cwd=ROOT)
            print(smoke.stdout.strip())
            checks.append(("bench/gpu_smoke.py (FP8, 8 layers x 1024) ran", smoke.returncode == 0, smoke.stderr.strip()[-300:]))
        elapsed = time.perf_counter() - t0
        checks.append((f"under {BUDGET_S // 60} minutes", elapsed <= BUDGET_S, f"{elapsed:.0f}s"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(c) for c, _, _ in checks)
    for check, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {check:<{width}}  {detail}")
    failed = [c for c, ok, _ in checks if not ok]
    write_result(args.json, "gpu_acceptance", rows)
    if failed:
        sys.exit(f"gpu_acceptance: {len(failed)} check(s) failed: {', '.join(failed)}")
    print(f"gpu_acceptance: all {len(checks)} checks passed in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
