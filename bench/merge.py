"""Merge memory: peak RSS of `python -m workflow merge` averaging 2 vs 8 checkpoints (streaming check).

    .venv/bin/python bench/merge.py [--hidden 512] [--layers 8] [--repeats 3]

Builds a throwaway study in a temp dir (the unit tests' tiny tokenizer and token files), saves 8
randomly initialised checkpoints of a model large enough that one copy of its weights dwarfs noise
(default about 26M parameters, ~100 MB in fp32), then runs two merges (`trunk_last_k: 2` and `8`),
each in a fresh process, and reads each process's peak RSS from `wait4`. Streaming keeps one input
(in the model) plus one float64 accumulator, so the ratio should stay near 1.0; a merge that held all
inputs at once would grow by about 6 x the fp32 model size from 2 to 8 inputs.
"""

from __future__ import annotations

import argparse
import warnings
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like stdlib modules (tokenize.py): import from the repo root, not from here.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from bench.common import Row, add_json_option, write_result  # noqa: E402

INPUTS = 8


def study(hidden: int, layers: int) -> dict:
    from tests.unit.conftest import train_params_dict

    raw = train_params_dict(checkpoints=list(range(1, INPUTS + 1)))
    raw["model"].update(num_layers=layers, hidden_size=hidden, num_attention_heads=8, num_query_groups=8,
                        ffn_hidden_size=3 * hidden)
    raw["decays"] = {}
    raw["merges"] = {"two": {"trunk_last_k": 2}, "eight": {"trunk_last_k": INPUTS}}
    return raw


def write_checkpoints(params) -> float:
    """INPUTS checkpoints with different random weights; returns the fp32 model size in MB."""
    import torch

    from workflow import paths
    from workflow.train import checkpoint as ckpt
    from workflow.train.loop import setup
    from workflow.train.model import build_model

    backend, tokenizer = setup(params)
    for step in params.trunk.checkpoints:
        torch.manual_seed(step)
        model = build_model(params.model, backend, tokenizer.vocab_size)
        meta = {"model_id": f"main@{step}", "kind": "trunk", "step": step, "fingerprint": f"bench-{step}",
                "has_optimizer": False}
        ckpt.save(paths.trunk_dir("main", step), model, None, {}, meta, [])
    return sum(p.numel() * 4 for p in model.parameters()) / 2**20


def peak_rss_mb(work: Path, name: str) -> float:
    """Run one merge in a fresh process; its own peak RSS (MB) from wait4."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "workflow", "merge", "--name", name], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"merge {name} failed:\n{out[-3000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # megatron: "Transformer Engine and Apex are not installed"

    from tests.unit.conftest import write_train_inputs
    from workflow.params import parse_params

    with tempfile.TemporaryDirectory(prefix="arbor-bench-merge-") as tmp:
        work = Path(tmp)
        write_train_inputs(work)
        raw = study(args.hidden, args.layers)
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        os.chdir(work)
        os.environ.setdefault("ARBOR_THREADS", "1")
        params = parse_params(raw)
        model_mb = write_checkpoints(params)
        print(f"model: {args.layers} layers x hidden {args.hidden}: {model_mb:.0f} MB fp32 "
              f"(float64 accumulator {2 * model_mb:.0f} MB); {args.repeats} repeats, median")
        rss = {}
        for name, n in (("two", 2), ("eight", INPUTS)):
            runs = [peak_rss_mb(work, name) for _ in range(args.repeats)]
            rss[n] = statistics.median(runs)
            print(f"{n} inputs: peak RSS {rss[n]:.0f} MB (runs: {', '.join(f'{r:.0f}' for r in runs)})")
        extra = rss[INPUTS] - rss[2]
        print(f"ratio {INPUTS}/2: {rss[INPUTS] / rss[2]:.3f} ({extra:+.0f} MB = {extra / model_mb:+.2f} x the model; "
              f"holding every input would add about {INPUTS - 2} x)")
        write_result(args.json, "merge", [Row(
            f"merge peak RSS, {INPUTS} inputs ({model_mb:.0f} MB model)", rss[INPUTS], "MB", "2 inputs", rss[2],
            rss[INPUTS] / rss[2], note=f"{extra / model_mb:+.2f} x the model; holding every input: about +{INPUTS - 2} x")])


if __name__ == "__main__":
    main()
