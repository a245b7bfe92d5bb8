"""Downstream tasks through lm-eval-harness: a model class over arbor checkpoints, and the task run.

`ArborLM` scores with the loaded megatron model (`workflow.evaluate.model`): `loglikelihood` and
`loglikelihood_rolling` in batches of `eval.batch_size`, sorted longest first; contexts longer than
`model.seq_length` are cut from the left, as lm-eval's `hf` model does. `generate_until` decodes
greedily (no KV cache: slow, but any task runs).

Tasks come from `workflow/tasks/*.yaml` (local, offline: data from `eval_tasks`) and lm-eval's own
registry. Runs are offline (`HF_DATASETS_OFFLINE`, `HF_HUB_OFFLINE`) and seeded by lm-eval's fixed
defaults, so the scores are deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "DISABLE_MULTIPROC": "1"}  # no downloads, no process pool
for _key, _value in OFFLINE.items():  # before `datasets` / `huggingface_hub` load: they read these on import
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402
from tqdm import tqdm  # noqa: E402

from workflow import paths  # noqa: E402
from workflow.errors import StageError  # noqa: E402
from workflow.evaluate.model import LoadedModel  # noqa: E402
from workflow.evaluate.taskdata import TASKS_DIR, local_tasks  # noqa: E402
from workflow.params import Params  # noqa: E402

BOOTSTRAP_ITERS = 1000  # resamples for the stderr of non-mean metrics (lm-eval's default is 100000)
DEFAULT_MAX_GEN_TOKS = 256


class ArborLM(TemplateLM):
    """lm-eval model over a loaded arbor checkpoint (byte-level BPE, EOD as the end-of-text/prefix token)."""

    def __init__(self, loaded: LoadedModel, batch_size: int, max_length: int) -> None:
        from tokenizers import Tokenizer

        from workflow.tokenize import prepare

        super().__init__()
        self.loaded, self.batch_size, self.max_length = loaded, batch_size, max_length
        self.tokenizer = prepare(Tokenizer.from_file(paths.tokenizer_file()))  # documents were encoded this way

    @property
    def eot_token_id(self) -> int:
        return self.loaded.tokenizer.eod

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) per request."""
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in tqdm(range(0, len(order), self.batch_size), desc="loglikelihood", unit="batch",
                          disable=disable_tqdm, leave=False):
            batch = order[start: start + self.batch_size]
            inputs = []
            for i in batch:
                _, context, continuation = requests[i]
                if not 0 < len(continuation) <= self.max_length:
                    raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                                     f"{self.max_length}-token context")
                inputs.append((context + continuation)[-(self.max_length + 1):][:-1])
            ids = torch.full((len(batch), max(map(len, inputs))), self.eot_token_id, dtype=torch.long)
            for row, inp in enumerate(inputs):  # right padding: causal attention never looks at it
                ids[row, : len(inp)] = torch.tensor(inp)
            width = max(len(requests[i][2]) for i in batch)  # logits only where a continuation is predicted
            at = torch.tensor([[max(0, len(inp) - width + k) for k in range(width)] for inp in inputs])
            logprobs = torch.log_softmax(self.loaded.logits(ids, at), dim=-1).cpu()
            for row, i in enumerate(batch):
                target = torch.tensor(requests[i][2])
                lp = logprobs[row, width - len(target):]
                results[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts: disjoint windows of `max_length` predicted tokens, the first
        conditioned on the EOD token, each later one on the tokens before it (lm-eval's rolling windows)."""
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None, None), context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[n] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string, EOD or `max_gen_toks` (sampling settings are ignored)."""
        out = []
        vocab = self.tokenizer.get_vocab_size()
        for req in tqdm(requests, desc="generate", disable=disable_tqdm, leave=False):
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids, new = self.tok_encode(context), []
            for _ in range(int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))):
                window = torch.tensor([(ids + new)[-self.max_length:]])
                token = int(self.loaded.logits(window, torch.tensor([[window.size(1) - 1]]))[0, -1, :vocab].argmax())
                if token == self.eot_token_id:
                    break
                new.append(token)
                if any(u in self.tok_decode(new) for u in until):
                    break
            text = self.tok_decode(new)
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out


def task_manager(tasks: list[str]):
    """lm-eval's TaskManager over the local tasks, plus lm-eval's registry unless only local tasks are asked
    for (indexing the registry takes ~20 s)."""
    from lm_eval.tasks import TaskManager

    only_local = all(t in local_tasks() for t in tasks)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not only_local)


def check_local_data(tasks: list[str]) -> None:
    for task in tasks:
        for f in local_tasks().get(task, []):
            if not Path(f).is_file():
                raise StageError(f"{f} is missing (data of the local task {task}): run `python -m workflow eval_tasks` first")


def scores(results: dict) -> dict[str, dict]:
    """lm-eval's results -> `{task: {metric: value, metric_stderr: value, "samples": n}}` (numbers only)."""
    out = {}
    for task, metrics in sorted(results["results"].items()):
        row = {}
        for key, value in metrics.items():
            name = key.split(",", 1)[0]
            if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = float(value)
        samples = results.get("n-samples", {}).get(task, {})
        if "effective" in samples:
            row["samples"] = int(samples["effective"])
        out[task] = row
    return out


def run_tasks(params: Params, loaded: LoadedModel) -> dict[str, dict]:
    """Run `eval.tasks` on a loaded model; `{}` when none are listed."""
    tasks = list(params.eval.tasks)
    if not tasks:
        return {}
    check_local_data(tasks)
    from lm_eval import simple_evaluate

    manager = task_manager(tasks)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise StageError(f"eval.tasks: unknown lm-eval task(s) {', '.join(unknown)}; local tasks: "
                         f"{', '.join(local_tasks())} (workflow/tasks/), others: `lm-eval ls tasks`")
    lm = ArborLM(loaded, params.eval.batch_size, params.model.seq_length)
    with without_env_report():
        results = simple_evaluate(lm, tasks=tasks, num_fewshot=params.eval.num_fewshot, limit=params.eval.task_limit,
                                  task_manager=manager, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
    return scores(results)


def without_env_report():
    """`simple_evaluate` ends by adding an environment report to its results (`lm_eval.loggers.utils.add_env_info`:
    torch's collect_env, which runs pip/conda/nvidia-smi, and an import of transformers): 1.8 CPU-s of a job
    for fields `scores` drops. The eval JSON keeps its own lineage."""
    from unittest import mock

    return mock.patch("lm_eval.evaluator.add_env_info", lambda results: None)


def task_line(tasks: dict[str, dict]) -> str:
    """`arbor_cloze acc 0.41, ...` for the stage's one-line summary."""
    parts = []
    for task, row in tasks.items():
        metric = next((m for m in ("acc_norm", "acc", "exact_match", "bits_per_byte") if m in row), None)
        if metric:
            parts.append(f"{task} {metric} {row[metric]:.3f}")
    return ", ".join(parts)

