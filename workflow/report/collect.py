"""The report's inputs: one `Model` per evaluated model (its eval JSON, lineage in words, tokens and FLOPs behind
its weights), and the training logs behind the loss plot."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from workflow import paths, shapes
from workflow.io import read_json
from workflow.params import Params, parse_model_id, scoped


@dataclass
class Model:
    """One row of the report."""
    id: str
    kind: str                          # trunk | decay | merge
    lineage: str                       # in words
    tokens: int                        # training tokens behind the weights
    own_steps: int                     # optimizer steps this model's own job ran
    own_tokens: int                    # tokens this model's own job trained on
    heldout: dict[str, dict[str, float]]  # domain (and "all") -> {"loss", "bpb", ...}
    tasks: dict[str, dict[str, float]]  # lm-eval task -> {metric: value}
    trunk: str = ""                    # the trunk it belongs to
    flops: float = 0.0                 # training compute behind the weights (tokens x FLOPs per token)

    @property
    def loss(self) -> float:
        return self.heldout["all"]["loss"]


def load_eval(model_id: str) -> dict:
    """The eval JSON of one model; a clear error when it is missing or is not this model's."""
    path = paths.eval_file(model_id)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m workflow evaluate --model {model_id}` first")
    data = read_json(path)
    overall = data.get("heldout", {}).get("all", {}) if isinstance(data, dict) else {}
    if not all(isinstance(overall.get(k), (int, float)) for k in ("loss", "bpb")) or data.get("model") != model_id:
        raise ValueError(f"{path}: not an eval of {model_id} with numeric heldout.all.loss/bpb; "
                         f"re-run `python -m workflow evaluate --model {model_id}`")
    return data


def read_log(model_dir: str) -> list[tuple[int, float]]:
    """(step, loss) pairs of a model dir's training log; [] (with a warning) when it has none."""
    path = Path(paths.train_log(model_dir))
    if not path.exists():
        print(f"warning: {path} is missing; its loss curve is left out", file=sys.stderr)
        return []
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [(int(r["step"]), float(r["loss"])) for r in rows if math.isfinite(float(r["loss"]))]


def trunk_log(params: Params) -> list[tuple[int, float]]:
    """The loss by step of the trunk `params` is scoped to (`Params.at`). The last checkpoint's log is cumulative;
    earlier logs are read only to fill steps it lacks (per-segment logs)."""
    points: dict[int, float] = {}
    for step in reversed(params.trunk.checkpoints):
        if points and min(points) <= step:
            break
        for s, loss in read_log(paths.trunk_dir(params.trunk_name, step)):
            if s <= step:
                points.setdefault(s, loss)
    return sorted(points.items())


def tokens_per_step(params: Params) -> int:
    """Tokens per optimizer step of the trunk `params` is scoped to."""
    return params.trunk.global_batch_size * params.model.seq_length


def flops_per_token(params: Params) -> float:
    """Training FLOPs per token of the scoped trunk's model (`shapes.flops_per_token`, as `check` estimates)."""
    return shapes.flops_per_token(params.model, params.tokenizer.vocab_size)


def history(params: Params, model_id: str) -> tuple[int, frozenset[str]]:
    """(trunk steps, decay branches) whose training is behind a model's weights; a merge unites its inputs'."""
    kind, key = parse_model_id(model_id)
    if kind == "decay":
        parent = params.decays[key].parent
        steps, branches = history(params, parent)
        return steps, branches | {key}
    if kind != "merge":
        return int(key), frozenset()
    parts = [history(params, m) for m in params.merge_inputs(key)]
    return max(t for t, _ in parts), frozenset().union(*(d for _, d in parts))


def tokens_seen(params: Params, model_id: str) -> int:
    """`tokens_seen` (or `step`) from meta.json when present; else steps × global batch × seq length.
    Merges count the union of their inputs' training (the shared trunk once)."""
    trunk, decays = history(params, model_id)
    params = scoped(params, model_id)
    steps = trunk + sum(params.total_steps(b) for b in decays)
    if not model_id.startswith("merge-"):
        meta_path = Path(paths.model_meta(paths.model_dir(model_id)))
        meta = read_json(meta_path) if meta_path.exists() else {}
        if meta.get("tokens_seen") is not None:
            return int(meta["tokens_seen"])
        steps = int(meta.get("step", steps))
    return steps * tokens_per_step(params)


def describe(params: Params, model_id: str) -> tuple[str, str, int]:
    """(kind, lineage in words, own optimizer steps) of one model."""
    kind, key = parse_model_id(model_id)
    params = scoped(params, model_id)
    if kind not in ("decay", "merge"):
        step, t = int(key), params.trunk
        prev = [c for c in t.checkpoints if c < step]
        start = f"continues {kind}@{prev[-1]}" if prev else f"from {t.from_hf} (Hugging Face)" if t.from_hf else "from scratch"
        lr = "constant LR" if t.schedule == "wsd" else f"{t.schedule} to {t.final_lr_ratio * t.lr:g} at step {t.checkpoints[-1]}"
        return "trunk", f"trunk {kind} to step {step} ({start}, {lr})", step - (prev[-1] if prev else 0)
    if kind == "decay":
        d = params.decays[key]
        fresh = " (fresh optimizer)" if d.rewarm and d.rewarm.reset_optimizer else ""
        rewarm = f"re-warm {d.rewarm_steps}{fresh} + " if d.rewarm else ""
        mixture = f", mixture {', '.join(f'{k} {v:g}' for k, v in d.mixture.items())}" if d.mixture else ""
        words = f"decay of {d.parent}, {rewarm}{params.decay_steps(key)} steps {d.shape} → {d.min_lr(params.trunk):g}{mixture}"
        return kind, words, params.total_steps(key)
    merge, inputs = params.merges[key], ", ".join(params.merge_inputs(key))
    source = f"the last {merge.trunk_last_k} trunk checkpoints ({inputs})" if merge.trunk_last_k else inputs
    how = {"weighted": f" (weights {':'.join(f'{w:g}' for w in merge.weights or [])})",
           "loss_weighted": f" (temperature {merge.temperature:g})" if merge.temperature else ""}.get(merge.method, "")
    return kind, f"{merge.method.replace('_', '-')} average of {source}{how}", 0


def collect(params: Params) -> list[Model]:
    """Every model, sorted: trunk by step, decays by branch point, merges inputs-first."""
    decays = sorted(params.decays, key=lambda b: (params.start_step(b), params.total_steps(b), b))
    ids = [i for t in params.trunks for i in params.trunk_ids(t)] + [f"decay-{b}" for b in decays] + \
        [f"merge-{m}" for m in params.merge_order()]
    models = []
    for model_id in ids:
        data = load_eval(model_id)
        kind, lineage, own = describe(params, model_id)
        tokens = tokens_seen(params, model_id)
        models.append(Model(model_id, kind, lineage, tokens, own, own * tokens_per_step(scoped(params, model_id)),
                            data["heldout"], data.get("tasks") or {}, params.trunk_of(model_id),
                            tokens * flops_per_token(scoped(params, model_id))))
    return models


def domains_of(params: Params, models: list[Model]) -> list[str]:
    """The study's domains, then any other the evals report, then "all"."""
    extra = sorted({d for m in models for d in m.heldout} - set(params.domains()) - {"all"})
    return params.domains() + extra + ["all"]
