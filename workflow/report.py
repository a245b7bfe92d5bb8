"""Report: one table, the study's cost, a science check, findings, a compute section and plots from every
model's eval and log.

Reads `artifacts/eval/<id>.json` of every model and, for the trained ones (trunk checkpoints and
decays), `train_log.jsonl` and `meta.json`. Writes `reports/` atomically::

    summary.md        table of every model (lineage, tokens, cost, held-out loss/bpb, task scores), study
                      cost, science check (PASS/FAIL per expectation), findings (links the plots)
    summary.html      the same, self-contained (plots embedded as base64)
    plots/loss.png    training loss vs tokens: the trunk, each decay from its branch point, held-out markers
    plots/bpb.png     held-out bits-per-byte per model, one bar per domain + overall
    plots/merges.png  each merge's held-out loss against its inputs' (when the study has merges)
    plots/compute.png held-out loss vs training compute, every model of every trunk, the frontier
    plots/lr.png      final loss vs peak LR of trunks that differ only in it (when there are such trunks)

Science check (what a WSD study should show; a FAIL is a finding, not an error):
- every decay beats its parent trunk checkpoint on pooled held-out loss;
- every `trunk_last_k` merge beats the last trunk checkpoint;
- every decay with a `mixture` beats its twin (same branch point, length, shape, final LR, re-warm; no
  mixture) on the held-out loss of the domain it weights most.

Output bytes depend only on the inputs (fixed matplotlib style, no timestamps in the PNGs).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from workflow import cost, faults, integrity, paths, shapes
from workflow.io import atomic_dir, read_json
from workflow.params import Params, parse_model_id, scoped

EMA_BETA = 0.9  # weight of the running average; ~10-step window
PNG_METADATA = {"Software": None}  # no matplotlib version in the PNG: stable bytes
RC = {"svg.hashsalt": "arbor", "figure.dpi": 100, "savefig.dpi": 110, "font.size": 9}
BPB_PLOT = "plots/bpb.png"  # relative to the report dir, next to paths.loss_plot()
MERGE_PLOT = "plots/merges.png"
SCORE_PLOT = "plots/scores.png"
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "bits_per_byte", "word_perplexity")  # a task's table column


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


# --- inputs ------------------------------------------------------------------------------------

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


# --- numbers and words -------------------------------------------------------------------------

def study_cost(params: Params) -> tuple[int, int]:
    """(optimizer steps executed, steps to train every trained model from scratch)."""
    executed = sum(run.steps for run in cost.runs(params))  # each trunk once, then each decay's own steps
    scratch = sum(sum(t.checkpoints) for t in params.trunks.values()) + sum(params.end_step(b) for b in params.decays)
    return executed, scratch


def cost_line(params: Params) -> str:
    executed, scratch = study_cost(params)
    n = sum(len(t.checkpoints) for t in params.trunks.values()) + len(params.decays)
    trunks = sum(t.checkpoints[-1] for t in params.trunks.values())
    tps = tokens_per_step(params.at(params.first_trunk()))
    return (f"Study cost: {executed:,} optimizer steps executed ({len(params.trunks)} trunk(s), {trunks:,} steps "
            f"+ {executed - trunks:,} decay steps; about {executed * tps:,} tokens) vs {scratch:,} "
            f"({scratch * tps:,} tokens) to train each of the {n} trained models from scratch: "
            f"{scratch / executed:.2f}× fewer ({1 - executed / scratch:.0%} saved). Merges cost no optimizer steps.")


def measured_cost(params: Params, models: list[Model]) -> str:
    """Tokens trained (each trunk once, each decay's own beyond its parent) and checkpoint bytes written (meta.json's
    file list) against `python -m workflow check`'s estimate; empty without the model dirs' meta.json."""
    by_id = {m.id: m for m in models}
    tokens = sum(by_id[params.trunk_ids(t)[-1]].tokens for t in params.trunks) + \
        sum(by_id[f"decay-{b}"].tokens - by_id[d.parent].tokens for b, d in params.decays.items())
    metas = [Path(paths.model_meta(paths.model_dir(m.id))) for m in models if m.kind != "merge"]
    if not all(meta.exists() for meta in metas):
        return ""
    metas = [read_json(meta) for meta in metas]
    written = sum(f["bytes"] for meta in metas for f in meta.get(integrity.FILES, {}).values())
    return cost.versus(params, tokens, written, metas[0].get("trained_on", "cpu"))


def findings(params: Params, models: list[Model]) -> list[str]:
    """One sentence per decay (vs its parent checkpoint) and per merge (vs its inputs), plus the best model."""
    by_id = {m.id: m for m in models}
    best = min(models, key=lambda m: m.loss)
    out = [f"Best held-out loss: {best.id} ({best.loss:.4f}, {best.heldout['all']['bpb']:.4f} bpb)."]
    for m in models:
        if m.kind == "decay":
            parent = by_id[params.decays[m.id[6:]].parent]
            delta = m.loss - parent.loss
            out.append(f"{m.id}: held-out loss {m.loss:.4f} vs {parent.loss:.4f} for its parent {parent.id} "
                       f"(Δ {delta:+.4f}, {delta / parent.loss:+.1%}).")
        elif m.kind == "merge":
            inputs = [by_id[i] for i in params.merge_inputs(m.id[6:])]
            top = min(inputs, key=lambda i: i.loss)
            mean = sum(i.loss for i in inputs) / len(inputs)
            listed = ", ".join(f"{i.id} {i.loss:.4f}" for i in inputs)
            out.append(f"{m.id}: held-out loss {m.loss:.4f} vs inputs {listed} "
                       f"(Δ {m.loss - top.loss:+.4f} vs the best input {top.id}, {m.loss - mean:+.4f} vs their mean).")
    return out


def domains_of(params: Params, models: list[Model]) -> list[str]:
    """The study's domains, then any other the evals report, then "all"."""
    extra = sorted({d for m in models for d in m.heldout} - set(params.domains()) - {"all"})
    return params.domains() + extra + ["all"]


def task_columns(models: list[Model]) -> list[tuple[str, str]]:
    """(task, metric) shown per task: the first of PRIMARY_METRICS any model reports, else its first metric."""
    columns = []
    for task in sorted({t for m in models for t in m.tasks}):
        metrics = {k for m in models for k in m.tasks.get(task, {}) if not k.endswith("_stderr") and k != "samples"}
        if metrics:
            columns.append((task, next((k for k in PRIMARY_METRICS if k in metrics), min(metrics))))
    return columns


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def table(models: list[Model], domains: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells shared by the markdown and HTML renderings."""
    tasks = task_columns(models)
    header = (["model", "lineage", "tokens seen", "own steps", "own tokens"]
              + [f"{d} {k}" for d in domains for k in ("loss", "bpb")] + [f"{t} {k}" for t, k in tasks])
    rows = [[m.id, m.lineage, f"{m.tokens:,}", f"{m.own_steps:,}", f"{m.own_tokens:,}"]
            + [_num(m.heldout.get(d, {}).get(k)) for d in domains for k in ("loss", "bpb")]
            + [_num(m.tasks.get(t, {}).get(k)) for t, k in tasks] for m in models]
    return header, rows


# --- science check -----------------------------------------------------------------------------

@dataclass
class Check:
    """One expectation of the study: `model` has a lower held-out loss than `baseline` on `domain`."""
    check: str
    model: str
    baseline: str | None  # None: no baseline exists (SKIP)
    domain: str           # "all" = pooled
    value: float | None = None
    base: float | None = None
    note: str = ""

    @property
    def result(self) -> str:
        if self.value is None or self.base is None:
            return "SKIP"
        return "PASS" if self.value < self.base else "FAIL"

    def cells(self) -> list[str]:
        delta = "—" if self.result == "SKIP" else f"{self.value - self.base:+.4f}"
        return [self.check, self.model, self.baseline or "—", f"held-out loss ({self.domain})", _num(self.value),
                _num(self.base), delta, f"{self.result}{': ' + self.note if self.note else ''}"]


CHECK_HEADER = ["check", "model", "baseline", "metric", "model value", "baseline value", "Δ", "result"]


def twin(params: Params, branch: str) -> str | None:
    """A decay with the same schedule as `branch` (branch point, re-warm, length, shape, final LR) and no mixture."""
    d, t = params.decays[branch], params.at(params.trunk_of(f"decay-{branch}")).trunk
    key = (d.parent, d.rewarm, params.decay_steps(branch), d.shape, d.min_lr(t))
    return next((b for b, o in params.decays.items()
                 if o.mixture is None and (o.parent, o.rewarm, params.decay_steps(b), o.shape, o.min_lr(t)) == key), None)


def science_checks(params: Params, models: list[Model]) -> list[Check]:
    """Decay vs parent checkpoint, `trunk_last_k` merge vs the last checkpoint, mixture decay vs its twin."""
    by_id = {m.id: m for m in models}

    def compare(check: str, model: str, baseline: str | None, domain: str = "all", note: str = "") -> Check:
        value = by_id[model].heldout.get(domain, {}).get("loss")
        base = by_id[baseline].heldout.get(domain, {}).get("loss") if baseline else None
        return Check(check, model, baseline, domain, value, base, note)

    out = [compare("decay beats its branch point", f"decay-{b}", d.parent) for b, d in params.decays.items()]
    out += [compare("LAWA merge beats the last checkpoint", f"merge-{n}", params.merge_inputs(n)[-1])
            for n, m in params.merges.items() if m.trunk_last_k]
    for b, d in params.decays.items():
        if d.mixture:
            domain = max(d.mixture, key=lambda k: (d.mixture[k], k))  # the upsampled domain
            other = twin(params, b)
            note = "" if other else "no twin: add a decay with the same from, steps, shape and final LR and no mixture"
            out.append(compare("mixture decay beats its twin on its upweighted domain", f"decay-{b}",
                               f"decay-{other}" if other else None, domain, note))
    decays = [m for m in models if m.kind == "decay"]
    for t, trunk in params.trunks.items():  # WSD + a short decay against a classic schedule of the same compute
        if trunk.schedule != "wsd" and decays:
            base = by_id[params.trunk_ids(t)[-1]]
            wsd = min(decays, key=lambda d: abs(math.log(d.flops / base.flops)))
            out.append(compare(f"a 10-20% decay beats the {trunk.schedule} baseline at equal compute", wsd.id, base.id,
                               note=f"compute {wsd.flops / base.flops:.2f}x the baseline's"))
    floor = noise_floor(params, models)
    if floor is not None:  # every comparison states whether it clears the seed-to-seed spread
        for c in out:
            if c.value is not None and c.base is not None:
                clears = "clears" if abs(c.value - c.base) > floor else "within"
                c.note = "; ".join(x for x in (c.note, f"{clears} the seed noise floor {floor:.4f}") if x)
    return out


# --- plots -------------------------------------------------------------------------------------

def ema(values: list[float], start: float | None = None) -> list[float]:
    """Exponential moving average (β = EMA_BETA), seeded with `start` or the first value."""
    out, acc = [], start
    for v in values:
        acc = v if acc is None else EMA_BETA * acc + (1 - EMA_BETA) * v
        out.append(acc)
    return out


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA)
    return buf.getvalue()


def loss_plot(params: Params, models: list[Model]) -> bytes:
    """Training loss vs tokens (raw faint, EMA solid): whole run, and a zoom on the branches.
    A decay's EMA continues the trunk's at its branch point (it smooths the model's whole history)."""
    from matplotlib.ticker import EngFormatter

    tps = tokens_per_step(params)
    trunk = trunk_log(params)
    trunk_ema = dict(zip((s for s, _ in trunk), ema([l for _, l in trunk])))
    curves = [("trunk", "black", [s for s, _ in trunk], [l for _, l in trunk], list(trunk_ema.values()), None)]
    colours = {m.id: "black" for m in models if m.kind == "trunk"}
    for i, m in enumerate(x for x in models if x.kind != "trunk"):
        colours[m.id] = f"C{i % 10}"
    for m in (x for x in models if x.kind == "decay"):
        start = params.start_step(m.id[6:])
        own = [(s, l) for s, l in read_log(paths.decay_dir(m.id[6:])) if s > start]
        seed = [trunk_ema[s] for s in trunk_ema if s <= start][-1:]  # the lineage's EMA at the branch point
        steps, raw = [s for s, _ in own], [l for _, l in own]
        smooth = ema(raw, seed[0] if seed else None)
        curves.append((m.id, colours[m.id], steps, raw, smooth, (start, seed[0]) if seed else None))

    fig, axes = _figure(11, 4.2, ncols=2)
    last = params.trunk.checkpoints[-1]
    branches = [m.id[6:] for m in models if m.kind == "decay"]
    lo = min([params.start_step(b) for b in branches] or [int(0.7 * last)])
    hi = max([last] + [params.end_step(b) for b in branches])
    lo = max(0, lo - (hi - lo) // 5)
    for ax, zoom in zip(axes, (False, True)):
        ys = []
        for label, colour, steps, raw, smooth, branch in curves:
            xs = [s * tps for s in steps]
            ax.plot(xs, raw, color=colour, alpha=0.2, linewidth=0.6)
            bx, by = ([branch[0] * tps], [branch[1]]) if branch else ([], [])
            ax.plot(bx + xs, by + smooth, color=colour, linewidth=1.4, label=f"{label} (train)")
            ys += [y for s, y in zip(steps, smooth) if not zoom or s >= lo]
        for m in models:
            marker = {"trunk": "o", "decay": "D", "merge": "*"}[m.kind]
            ax.plot([m.tokens], [m.loss], marker=marker, color=colours[m.id], markersize=9 if m.kind == "merge" else 6,
                    markeredgecolor="white", linestyle="none", label=f"{m.id} (held-out)" if m.kind == "merge" else None)
            ys.append(m.loss)
        if zoom:
            ax.set_xlim(lo * tps, max([hi * tps] + [m.tokens for m in models]) * 1.02)
            if ys:
                pad = 0.05 * (max(ys) - min(ys) or 1.0)
                ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.plot([], [], marker="o", color="grey", linestyle="none", label="held-out loss (eval)")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.set_title("branches (zoom)" if zoom else "whole run")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Training loss: EMA-smoothed (β={EMA_BETA}) solid, raw per-step faint; markers: held-out loss")
    return _png(fig)


def bpb_plot(models: list[Model], domains: list[str]) -> bytes:
    """Grouped bars: per model, held-out bpb of each domain and overall (value printed on the overall bar)."""
    width = 0.8 / len(domains)
    fig, (ax,) = _figure(max(6.4, 1.5 + 0.25 * len(models) * len(domains)), 4.2)
    for j, d in enumerate(domains):
        xs = [i + (j - (len(domains) - 1) / 2) * width for i in range(len(models))]
        vals = [m.heldout.get(d, {}).get("bpb") or float("nan") for m in models]
        bars = ax.bar(xs, vals, width, label=d, color="dimgrey" if d == "all" else f"C{j % 10}")
        if d == "all":
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(models)), [m.id for m in models], rotation=30, ha="right")
    ax.set_ylabel("held-out bits per byte")
    ax.margins(y=0.12)
    ax.legend(fontsize=7, ncols=min(len(domains), 6))
    ax.set_title("Held-out bpb per model (lower is better)")
    return _png(fig)


def compute_plot(models: list[Model], frontier: list[str]) -> bytes:
    """Held-out loss against training compute for every model of every trunk (one colour per trunk), the
    compute-optimal frontier as a line."""
    fig, (ax,) = _figure(6.4, 4.2)
    trunks = list(dict.fromkeys(m.trunk for m in models))
    for i, t in enumerate(trunks):
        own = [m for m in models if m.trunk == t]
        ax.scatter([m.flops for m in own], [m.loss for m in own], color=f"C{i % 10}", label=t, s=18)
    front = sorted((m for m in models if m.id in frontier), key=lambda m: m.flops)
    ax.plot([m.flops for m in front], [m.loss for m in front], color="black", lw=0.8, label="frontier")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=7)
    ax.set_title("Held-out loss vs compute")
    return _png(fig)


def lr_plot(points: list[tuple[float, float, str]]) -> bytes:
    """Final held-out loss against peak LR for trunks that differ only in it."""
    fig, (ax,) = _figure(5, 3.6)
    points = sorted(points)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="C0")
    for lr, loss, name in points:
        ax.annotate(name, (lr, loss), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("peak LR")
    ax.set_ylabel("held-out loss (last checkpoint)")
    ax.set_title("LR sensitivity")
    return _png(fig)


def lr_points(params: Params, models: list[Model]) -> list[tuple[float, float, str]]:
    """(peak LR, last checkpoint's loss, trunk) of every trunk in a pair that differs only in peak LR."""
    by_id = {m.id: m for m in models}
    names = {t for pair, keys in differing(params).items() if keys == ["lr"] for t in pair}
    return [(params.trunks[t].lr, by_id[params.trunk_ids(t)[-1]].loss, t) for t in sorted(names)]


def frontier_of(models: list[Model]) -> list[str]:
    """Models with a lower loss than every model of less compute."""
    out, best = [], math.inf
    for m in sorted(models, key=lambda m: m.flops):
        if m.loss < best:
            out.append(m.id)
            best = m.loss
    return out


def merge_plot(params: Params, models: list[Model]) -> bytes:
    """One panel per merge: held-out loss of each input and of the merge (value on each bar)."""
    by_id = {m.id: m for m in models}
    merges = [m for m in models if m.kind == "merge"]
    fig, axes = _figure(max(4.5, 3.2 * len(merges)), 3.8, ncols=len(merges))
    for ax, merge in zip(axes, merges):
        bars = [by_id[i] for i in params.merge_inputs(merge.id[6:])] + [merge]
        losses = [m.loss for m in bars]
        drawn = ax.bar(range(len(bars)), losses, color=["silver"] * (len(bars) - 1) + ["C3"])
        ax.bar_label(drawn, fmt="%.4f", fontsize=7, padding=2)
        ax.set_xticks(range(len(bars)), [m.id for m in bars], rotation=30, ha="right", fontsize=7)
        pad = 0.25 * (max(losses) - min(losses) or 0.1)
        ax.set_ylim(min(losses) - pad, max(losses) + 2 * pad)
        ax.set_title(merge.id, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("held-out loss (nats/token)")
    fig.suptitle("Merges (red) vs their inputs: held-out loss, lower is better", fontsize=9)
    return _png(fig)


# --- renderings --------------------------------------------------------------------------------

TABLE_NOTE = ("Tokens seen of a merge: the training behind its inputs, the shared trunk counted once. Own steps / "
              "own tokens: the training cost of the model's own job (trunk: its segment; merges cost none). Task "
              "columns: lm-eval scores (acc: higher is better; bits_per_byte, perplexity: lower is better).")
NO_CHECKS = "No decays or LAWA merges to check."


SELECTION_HEADER = ["selection", "source", "scorer", "rule", "docs kept", "of", "kept %", "lowest kept score", "tokens kept"]


def selection_rows(params: Params, selections: list[str]) -> list[list[str]]:
    """Per data variant and source: the rule, documents and tokens kept (from `select`'s and its tokens' stats)."""
    rows = []
    for sel in selections:
        stats = read_json(Path(paths.selected_dir(sel)) / "stats.json")
        rule = f"threshold {stats['threshold']}" if "threshold" in stats else f"top {stats['keep_fraction']:.0%}"
        for source, s in stats["sources"].items():
            tokens = read_json(paths.tokens_stats(params.sources[source].domain, sel))["train"]["tokens"]
            lowest = "" if s["lowest_kept"] is None else f"{s['lowest_kept']:.4f}"
            rows.append([sel, source, stats["scorer"], rule, f"{s['kept']:,}", f"{s['docs']:,}",
                         f"{100 * s['kept'] / max(s['docs'], 1):.1f}", lowest, f"{tokens:,}"])
    return rows


def score_plot(selections: list[str]) -> bytes:
    """Per source, the histogram of each scorer's scores, a dashed line at each selection's cut (its threshold, or
    the lowest score a keep_fraction kept)."""
    stats = {sel: read_json(Path(paths.selected_dir(sel)) / "stats.json") for sel in selections}
    sources = list(next(iter(stats.values()))["sources"])
    fig, axes = _figure(3.2 * len(sources), 2.6, ncols=len(sources))
    drawn: set[tuple[str, str]] = set()
    for ax, source in zip(axes, sources):
        for i, (sel, st) in enumerate(stats.items()):
            edges, s = st["bin_edges"], st["sources"][source]
            if (st["scorer"], source) not in drawn:
                drawn.add((st["scorer"], source))
                ax.stairs(s["histogram"], edges, fill=True, alpha=0.4, label=st["scorer"])
            cut = st.get("threshold", s["lowest_kept"])
            if cut is not None:
                ax.axvline(cut, color=f"C{i + 1}", linestyle="--", label=f"{sel}: kept {s['kept']:,}/{s['docs']:,}")
        ax.set_title(source)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("documents")
    return _png(fig)


def _md_table(header: list[str], rows: list[list[str]], text_columns: int) -> list[str]:
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(header: list[str], rows: list[list[str]], costs: list[str], checks: list[Check], notes: list[str],
             plots: dict[str, str], selection: tuple[str, list[list[str]]] | None = None) -> str:
    lines = ["# Study report", "", *_md_table(header, rows, 2), "", TABLE_NOTE, "", *(x for c in costs for x in (c, "")),
             "## Science check", ""]
    lines += _md_table(CHECK_HEADER, [c.cells() for c in checks], 4) if checks else [NO_CHECKS]
    if selection:
        lines += ["", "## Data selection", "", selection[0], "", *_md_table(SELECTION_HEADER, selection[1], 4)]
    lines += ["", "## Findings", ""] + [f"- {n}" for n in notes] + ["", "## Plots", ""]
    lines += [f"![{alt}]({rel})\n" for alt, rel in plots.items()]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def html_page(header: list[str], rows: list[list[str]], costs: list[str], checks: list[Check], notes: list[str],
              images: dict[str, bytes], selection: tuple[str, list[list[str]]] | None = None) -> str:
    e = html.escape
    imgs = "".join(f'<p><img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>\n'
                   for alt, png in images.items())
    check_table = _html_table(CHECK_HEADER, [c.cells() for c in checks]) if checks else f"<p>{NO_CHECKS}</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Study report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:3px 8px}}td:nth-child(n+3){{text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>Study report</h1>
{_html_table(header, rows)}
<p>{e(TABLE_NOTE)}</p>
{"".join(f"<p>{e(c)}</p>" for c in costs)}
<h2>Science check</h2>
{check_table}
{f"<h2>Data selection</h2><p>{e(selection[0])}</p>{_html_table(SELECTION_HEADER, selection[1])}" if selection else ""}
<h2>Findings</h2>
<ul>{"".join(f"<li>{e(n)}</li>" for n in notes)}</ul>
<h2>Plots</h2>
{imgs}</body></html>
"""


def settings(params: Params, trunk: str) -> dict:
    """What a trunk's weights depend on (its model and training settings, not where it saves)."""
    t = params.trunks[trunk]
    out = t.model_dump(mode="json", exclude={"checkpoints", "save_interval", "log_interval", "model", "declared"})
    return out | ({"horizon": t.checkpoints[-1]} if t.schedule != "wsd" else {}) | \
        {f"model.{k}": v for k, v in t.model.model_dump(mode="json", exclude={"parallel"}).items()}


def differing(params: Params) -> dict[tuple[str, str], list[str]]:
    """Pairs of trunks -> the settings they differ in."""
    names, s = list(params.trunks), {t: settings(params, t) for t in params.trunks}
    return {(a, b): sorted(k for k in s[a].keys() | s[b].keys() if s[a].get(k) != s[b].get(k))
            for i, a in enumerate(names) for b in names[i + 1:]}


def noise_floor(params: Params, models: list[Model]) -> float | None:
    """The spread (max - min) of held-out loss between the last checkpoints of trunks that differ only in seed."""
    by_id = {m.id: m for m in models}
    pairs = [p for p, keys in differing(params).items() if keys == ["seed"]]
    if not pairs:
        return None
    last = lambda t: by_id[params.trunk_ids(t)[-1]].loss  # noqa: E731
    return max(abs(last(a) - last(b)) for a, b in pairs)


def fit_power_law(compute: list[float], loss: list[float]) -> tuple[float, float, float]:
    """(a, b, c) of L(C) = a·C^(−b) + c fitted by least squares (scipy), C in units of the smallest compute."""
    import numpy as np
    from scipy.optimize import curve_fit

    c0 = min(compute)
    x, y = np.asarray(compute, dtype=float) / c0, np.asarray(loss, dtype=float)
    (a, b, c), _ = curve_fit(lambda x, a, b, c: a * x ** (-b) + c, x, y, p0=(y.max() - y.min() + 1e-3, 0.3, y.min() * 0.9),
                             bounds=([0, 0, 0], [np.inf, 5, np.inf]), maxfev=20000)
    return float(a * c0 ** b), float(b), float(c)


def size_fit_lines(params: Params, models: list[Model]) -> list[str]:
    """The power-law fit of the final loss of each model size (trunks' last checkpoints, by FLOPs per token) against
    compute, when at least three sizes are present; and its prediction for the largest size fitted on the others."""
    sizes: dict[int, Model] = {}
    for t in params.trunks:
        m = next(x for x in models if x.id == params.trunk_ids(t)[-1])
        per_token = flops_per_token(params.at(t))
        if per_token not in sizes or m.loss < sizes[per_token].loss:
            sizes[per_token] = m
    if len(sizes) < 3:
        return [f"Power-law fit L(C) = a·C^(−b) + c: needs three model sizes, the study has {len(sizes)}."]
    pts = sorted(sizes.values(), key=lambda m: m.flops)
    a, b, c = fit_power_law([m.flops for m in pts], [m.loss for m in pts])
    out = [f"Power-law fit over {len(pts)} sizes: L(C) = {a:.4g}·C^(−{b:.4f}) + {c:.4f}."]
    if len(pts) >= 4:
        a2, b2, c2 = fit_power_law([m.flops for m in pts[:-1]], [m.loss for m in pts[:-1]])
        big = pts[-1]
        out.append(f"Fitted without the largest ({big.id}), it predicts {a2 * big.flops ** -b2 + c2:.4f} for it; measured {big.loss:.4f}.")
    return out


def compute_lines(params: Params, models: list[Model], floor: float | None) -> list[str]:
    """Markdown: every model by training compute, the WSD-vs-cosine table at equal compute, trunk comparisons."""
    out = ["| model | trunk | tokens | compute (FLOPs) | held-out loss |", "| --- | --- | ---: | ---: | ---: |"]
    out += [f"| {m.id} | {m.trunk} | {m.tokens:,} | {m.flops:.3e} | {m.loss:.4f} |" for m in sorted(models, key=lambda m: m.flops)]
    frontier = frontier_of(models)
    out += ["", f"Compute-optimal frontier (lowest loss so far by compute): {', '.join(frontier)}."]
    baselines = [m for m in models if m.kind == "trunk" and params.trunks[m.trunk].schedule != "wsd"
                 and int(m.id.split("@")[1]) == params.trunks[m.trunk].checkpoints[-1]]
    decays = [m for m in models if m.kind == "decay"]
    if baselines and decays:
        out += ["", "WSD vs classic schedule at equal compute (the decay whose compute is nearest each baseline's):", "",
                "| baseline | schedule | compute | loss | WSD model | compute | loss | Δ loss | result |",
                "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for b in baselines:
            w = min(decays, key=lambda d: abs(math.log(d.flops / b.flops)))
            delta = w.loss - b.loss
            verdict = "WSD matches or beats" if delta <= 0 else "WSD worse"
            if floor is not None and abs(delta) < floor:
                verdict += f" (within the seed noise floor {floor:.4f})"
            out.append(f"| {b.id} | {params.trunks[b.trunk].schedule} | {b.flops:.3e} | {b.loss:.4f} | {w.id} | "
                       f"{w.flops:.3e} | {w.loss:.4f} | {delta:+.4f} | {verdict} |")
    by_id = {m.id: m for m in models}
    pairs = {pair: keys for pair, keys in differing(params).items() if len(keys) == 1}
    if not pairs:
        out += ["", "Trunks that differ in one setting: none."]
    else:
        out += ["", "Trunks that differ in one setting (last checkpoints):", "",
                "| trunks | setting | loss | loss | Δ | beyond noise |", "| --- | --- | ---: | ---: | ---: | --- |"]
        for (a, b), keys in pairs.items():
            if len(keys) != 1:
                continue
            la, lb = by_id[params.trunk_ids(a)[-1]].loss, by_id[params.trunk_ids(b)[-1]].loss
            beyond = "—" if floor is None or keys == ["seed"] else ("yes" if abs(la - lb) > floor else "no")
            out.append(f"| {a} vs {b} | {keys[0]}: {settings(params, a)[keys[0]]} vs {settings(params, b)[keys[0]]} | "
                       f"{la:.4f} | {lb:.4f} | {la - lb:+.4f} | {beyond} |")
    out += [""] + size_fit_lines(params, models)
    out += ["", f"Seed noise floor: {floor:.4f} (largest held-out loss gap between trunks differing only in seed)." if floor is not None
            else "Seed noise floor: none (no two trunks differ only in their seed)."]
    return out


def run(params: Params, *, inputs: dict[str, list[str]]) -> None:
    """Read every eval and training log (`inputs`), then write `reports/` in one atomic step."""
    import matplotlib
    import matplotlib.style

    models = collect(params)  # fails on a missing eval before anything is written
    domains = domains_of(params, models)
    header, rows = table(models, domains)
    costs = [c for c in (cost_line(params), measured_cost(params, models)) if c]
    checks, notes = science_checks(params, models), findings(params, models)
    compute = compute_lines(params, models, noise_floor(params, models))
    root = Path(paths.report_dir())
    first = params.first_trunk()
    with matplotlib.style.context("default"), matplotlib.rc_context(RC):
        plots = {"training loss": (Path(paths.loss_plot()).relative_to(root).as_posix(),
                                   loss_plot(params.at(first), [m for m in models if m.trunk == first])),
                 "held-out bpb": (BPB_PLOT, bpb_plot(models, domains))}
        if params.merges:
            plots["merges vs inputs"] = (MERGE_PLOT, merge_plot(params, models))
        plots["loss vs compute"] = ("plots/compute.png", compute_plot(models, frontier_of(models)))
        if lr_points(params, models):
            plots["LR sensitivity"] = ("plots/lr.png", lr_plot(lr_points(params, models)))
        selections = list(params.quality.selections)
        if selections:
            plots["quality scores"] = (SCORE_PLOT, score_plot(selections))
    trains_on = "; ".join(f"trunk {t} and its decays train on {f'data variant {s.data}' if s.data else 'the whole curated corpus'}"
                          for t, s in params.trunks.items())
    selection = (f"{trains_on[0].upper()}{trains_on[1:]}; held-out losses are always on every source's whole held-out split.",
                 selection_rows(params, selections)) if selections else None
    with atomic_dir(root) as tmp:
        for rel, png in plots.values():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(png)
            faults.point("report.plot")
        md = tmp / Path(paths.report_file()).relative_to(root)
        md.write_text(markdown(header, rows, costs, checks, notes, {alt: rel for alt, (rel, _) in plots.items()},
                               selection) + "\n## Compute\n\n" + "\n".join(compute) + "\n", encoding="utf-8")
        md.with_suffix(".html").write_text(html_page(header, rows, costs, checks, notes,
                                                     {alt: png for alt, (_, png) in plots.items()}, selection),
                                           encoding="utf-8")
    best, (executed, scratch) = min(models, key=lambda m: m.loss), study_cost(params)
    verdicts = [c.result for c in checks]
    print(f"[report] {len(models)} models → {root}/ (summary.md, summary.html, plots/); best held-out loss "
          f"{best.id} {best.loss:.4f}; {executed:,} steps executed vs {scratch:,} from scratch; science check "
          f"{verdicts.count('PASS')} pass, {verdicts.count('FAIL')} fail, {verdicts.count('SKIP')} skip")
