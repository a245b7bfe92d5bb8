"""lm-eval log-likelihood scoring: output logits at the continuation positions only vs at every position.

    .venv/bin/python bench/evaluate.py [--requests 1200] [--vocab 4096] [--repeats 3]

Builds the default study's model shape (randomly initialised; `--vocab` rows in the output layer) in a
throwaway study (the unit tests' tiny tokenizer) and scores cloze-like requests (contexts of 40-60 tokens,
continuations of 3-8, `eval.batch_size` 8, like `arbor_cloze`) with `ArborLM._loglikelihood_tokens`, one
thread. The baseline computes the output layer at every position and gathers the continuation rows (what
scoring did before); both give the same scores, which the script checks. Median of `--repeats`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/tokenize.py
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from bench.common import Row, add_json_option, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # megatron: "Transformer Engine and Apex are not installed"
    os.environ["ARBOR_THREADS"] = "1"

    import torch

    from tests.unit.conftest import train_params_dict, write_train_inputs
    from workflow.evaluate.harness import ArborLM
    from workflow.evaluate.model import LoadedModel
    from workflow.params import parse_params
    from workflow.train.loop import setup
    from workflow.train.model import build_model

    class EveryPosition(LoadedModel):
        """The baseline: the output layer over every position, then the rows asked for."""

        def logits(self, tokens, at=None):
            full = super().logits(tokens)
            return full if at is None else full.gather(1, at[..., None].expand(-1, -1, full.size(-1)))

    with tempfile.TemporaryDirectory(prefix="arbor-bench-evaluate-") as tmp:
        os.chdir(tmp)
        write_train_inputs(Path(tmp))
        raw = train_params_dict()
        raw["model"].update(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=3 * args.hidden,
                            seq_length=128)
        params = parse_params(raw)
        backend, tokenizer = setup(params)
        torch.manual_seed(0)
        model = build_model(params.model, backend, args.vocab).eval()
        rng = random.Random(0)
        requests = [((None, None), [rng.randrange(args.vocab) for _ in range(rng.randint(40, 60))],
                     [rng.randrange(args.vocab) for _ in range(rng.randint(3, 8))]) for _ in range(args.requests)]
        times: dict[str, list[float]] = {"continuation": [], "every": []}
        scores = {}
        for _ in range(args.repeats):
            for name, cls in (("continuation", LoadedModel), ("every", EveryPosition)):
                lm = ArborLM.__new__(ArborLM)  # no tokenizer file needed: requests are token ids already
                lm.loaded, lm.batch_size, lm.max_length = cls("bench", model, backend, tokenizer, {}), 8, 128
                start = time.perf_counter()
                scores[name] = lm._loglikelihood_tokens(requests, disable_tqdm=True)
                times[name].append(time.perf_counter() - start)
        worst = max(abs(a[0] - b[0]) for a, b in zip(scores["continuation"], scores["every"]))
        if worst > 1e-3 or [a[1] for a in scores["continuation"]] != [b[1] for b in scores["every"]]:
            raise SystemExit(f"the two ways disagree: largest log-likelihood difference {worst:.2e}")
        new, old = statistics.median(times["continuation"]), statistics.median(times["every"])
        print(f"{args.requests} requests, vocab {args.vocab}, {args.layers} layers x {args.hidden}, 1 thread, "
              f"median of {args.repeats}")
        print(f"output layer at every position:      {old:6.2f} s ({', '.join(f'{t:.2f}' for t in times['every'])})")
        print(f"output layer at continuations only:  {new:6.2f} s ({', '.join(f'{t:.2f}' for t in times['continuation'])})")
        print(f"speed-up {old / new:.2f}x; largest score difference {worst:.1e}")
        write_result(args.json, "evaluate", [Row(
            f"lm-eval loglikelihood, {args.requests} cloze-like requests", args.requests / new, "requests/s",
            "output layer at every position", args.requests / old, old / new, ">= 1.3")])


if __name__ == "__main__":
    main()
