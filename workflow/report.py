"""Report: one table, the study's cost, findings and two plots from every model's eval and training log.

Reads `artifacts/eval/<id>.json` of every model and, for the trained ones (trunk checkpoints and
decays), `train_log.jsonl` and `meta.json`. Writes `reports/` atomically::

    summary.md       table of every model, study cost, findings (links the plots)
    summary.html     the same, self-contained (plots embedded as base64)
    plots/loss.png   training loss vs tokens: the trunk, each decay from its branch point, held-out markers
    plots/bpb.png    held-out bits-per-byte per model, one bar per domain + overall

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

from workflow import paths
from workflow.io import atomic_dir, read_json
from workflow.params import Params

EMA_BETA = 0.9  # weight of the running average; ~10-step window
PNG_METADATA = {"Software": None}  # no matplotlib version in the PNG: stable bytes
RC = {"svg.hashsalt": "arbor", "figure.dpi": 100, "savefig.dpi": 110, "font.size": 9}
BPB_PLOT = "plots/bpb.png"  # relative to the report dir, next to paths.loss_plot()


@dataclass
class Model:
    """One row of the report."""
    id: str
    kind: str                          # trunk | decay | merge
    lineage: str                       # in words
    tokens: int                        # training tokens behind the weights
    own_steps: int                     # optimizer steps this model's own job ran
    heldout: dict[str, dict[str, float]]  # domain (and "all") -> {"loss", "bpb", ...}

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
    """The trunk's loss by step. The last checkpoint's log is cumulative; earlier logs are read only
    to fill steps it lacks (per-segment logs)."""
    points: dict[int, float] = {}
    for step in reversed(params.trunk.checkpoints):
        if points and min(points) <= step:
            break
        for s, loss in read_log(paths.trunk_dir(step)):
            if s <= step:
                points.setdefault(s, loss)
    return sorted(points.items())


def tokens_per_step(params: Params) -> int:
    return params.trunk.global_batch_size * params.model.seq_length


def history(params: Params, model_id: str) -> tuple[int, frozenset[str]]:
    """(trunk steps, decay branches) whose training is behind a model's weights; a merge unites its inputs'."""
    kind, key = model_id.split("-", 1)
    if kind == "trunk":
        return int(key), frozenset()
    if kind == "decay":
        return params.decays[key].from_step, frozenset([key])
    parts = [history(params, m) for m in params.merges[key].models]
    return max(t for t, _ in parts), frozenset().union(*(d for _, d in parts))


def tokens_seen(params: Params, model_id: str) -> int:
    """`tokens_seen` (or `step`) from meta.json when present; else steps × global batch × seq length.
    Merges count the union of their inputs' training (the shared trunk once)."""
    trunk, decays = history(params, model_id)
    steps = trunk + sum(params.decays[b].steps for b in decays)
    if not model_id.startswith("merge-"):
        meta_path = Path(paths.model_dir(model_id)) / "meta.json"
        meta = read_json(meta_path) if meta_path.exists() else {}
        if meta.get("tokens_seen") is not None:
            return int(meta["tokens_seen"])
        steps = int(meta.get("step", steps))
    return steps * tokens_per_step(params)


def describe(params: Params, model_id: str) -> tuple[str, str, int]:
    """(kind, lineage in words, own optimizer steps) of one model."""
    kind, key = model_id.split("-", 1)
    if kind == "trunk":
        step = int(key)
        prev = [c for c in params.trunk.checkpoints if c < step]
        start = f"continues trunk-{prev[-1]}" if prev else "from scratch"
        return kind, f"stable trunk to step {step} ({start}, constant LR)", step - (prev[-1] if prev else 0)
    if kind == "decay":
        d = params.decays[key]
        return kind, f"decay of trunk-{d.from_step}, {d.steps} steps {d.shape} → {d.final_lr:g}", d.steps
    merge = params.merges[key]
    return kind, f"{merge.method} average of {', '.join(merge.models)}", 0


def collect(params: Params) -> list[Model]:
    """Every model, sorted: trunk by step, decays by branch point, merges inputs-first."""
    decays = sorted(params.decays, key=lambda b: (params.decays[b].from_step, params.decays[b].steps, b))
    ids = [f"trunk-{s}" for s in params.trunk.checkpoints] + [f"decay-{b}" for b in decays] + \
        [f"merge-{m}" for m in params.merge_order()]
    models = []
    for model_id in ids:
        heldout = load_eval(model_id)["heldout"]
        kind, lineage, own = describe(params, model_id)
        models.append(Model(model_id, kind, lineage, tokens_seen(params, model_id), own, heldout))
    return models


# --- numbers and words -------------------------------------------------------------------------

def study_cost(params: Params) -> tuple[int, int]:
    """(optimizer steps executed, steps to train every trained model from scratch)."""
    executed = params.trunk.checkpoints[-1] + sum(d.steps for d in params.decays.values())
    scratch = sum(params.trunk.checkpoints) + sum(d.from_step + d.steps for d in params.decays.values())
    return executed, scratch


def cost_line(params: Params) -> str:
    executed, scratch = study_cost(params)
    n = len(params.trunk.checkpoints) + len(params.decays)
    return (f"Study cost: {executed:,} optimizer steps executed (trunk to step {params.trunk.checkpoints[-1]:,} "
            f"+ {executed - params.trunk.checkpoints[-1]:,} decay steps) vs {scratch:,} to train each of the {n} "
            f"trained models from scratch: {scratch / executed:.2f}× fewer ({1 - executed / scratch:.0%} saved).")


def findings(params: Params, models: list[Model]) -> list[str]:
    """One sentence per decay (vs its parent checkpoint) and per merge (vs its inputs), plus the best model."""
    by_id = {m.id: m for m in models}
    best = min(models, key=lambda m: m.loss)
    out = [f"Best held-out loss: {best.id} ({best.loss:.4f}, {best.heldout['all']['bpb']:.4f} bpb)."]
    for m in models:
        if m.kind == "decay":
            parent = by_id[f"trunk-{params.decays[m.id[6:]].from_step}"]
            delta = m.loss - parent.loss
            out.append(f"{m.id}: held-out loss {m.loss:.4f} vs {parent.loss:.4f} for its parent {parent.id} "
                       f"(Δ {delta:+.4f}, {delta / parent.loss:+.1%}).")
        elif m.kind == "merge":
            inputs = [by_id[i] for i in params.merges[m.id[6:]].models]
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


def table(models: list[Model], domains: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells shared by the markdown and HTML renderings."""
    header = ["model", "lineage", "tokens seen", "own steps"] + [f"{d} {k}" for d in domains for k in ("loss", "bpb")]

    def cell(m: Model, d: str, k: str) -> str:
        v = m.heldout.get(d, {}).get(k)
        return "—" if v is None else f"{v:.4f}"

    rows = [[m.id, m.lineage, f"{m.tokens:,}", f"{m.own_steps:,}"] + [cell(m, d, k) for d in domains for k in ("loss", "bpb")]
            for m in models]
    return header, rows


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
        d = params.decays[m.id[6:]]
        own = [(s, l) for s, l in read_log(paths.decay_dir(m.id[6:])) if s > d.from_step]
        seed = [trunk_ema[s] for s in trunk_ema if s <= d.from_step][-1:]  # the lineage's EMA at the branch point
        steps, raw = [s for s, _ in own], [l for _, l in own]
        smooth = ema(raw, seed[0] if seed else None)
        curves.append((m.id, colours[m.id], steps, raw, smooth, (d.from_step, seed[0]) if seed else None))

    fig, axes = _figure(11, 4.2, ncols=2)
    last = params.trunk.checkpoints[-1]
    lo = min([d.from_step for d in params.decays.values()] or [int(0.7 * last)])
    hi = max([last] + [d.from_step + d.steps for d in params.decays.values()])
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


# --- renderings --------------------------------------------------------------------------------

def markdown(header: list[str], rows: list[list[str]], cost: str, notes: list[str]) -> str:
    lines = ["# Study report", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Tokens seen of a merge: the training behind its inputs, the shared trunk counted once. "
              "Own steps: optimizer steps of the model's own job (trunk: its segment).", "", cost, "",
              "## Findings", ""] + [f"- {n}" for n in notes]
    loss_png = Path(paths.loss_plot()).relative_to(paths.report_dir()).as_posix()
    lines += ["", "## Plots", "", f"![training loss]({loss_png})", "", f"![held-out bpb]({BPB_PLOT})", ""]
    return "\n".join(lines)


def html_page(header: list[str], rows: list[list[str]], cost: str, notes: list[str], images: dict[str, bytes]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    imgs = "".join(f'<p><img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>\n'
                   for alt, png in images.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Study report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:3px 8px}}td:nth-child(n+3){{text-align:right}}img{{max-width:100%}}</style>
</head><body>
<h1>Study report</h1>
<table><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<p>{e(cost)}</p>
<h2>Findings</h2>
<ul>{"".join(f"<li>{e(n)}</li>" for n in notes)}</ul>
<h2>Plots</h2>
{imgs}</body></html>
"""


def run(params: Params) -> None:
    """Read every eval and training log, then write `reports/` in one atomic step."""
    import matplotlib
    import matplotlib.style

    models = collect(params)  # fails on a missing eval before anything is written
    domains = domains_of(params, models)
    header, rows = table(models, domains)
    cost, notes = cost_line(params), findings(params, models)
    with matplotlib.style.context("default"), matplotlib.rc_context(RC):
        images = {"training loss": loss_plot(params, models), "held-out bpb": bpb_plot(models, domains)}
    root = Path(paths.report_dir())
    with atomic_dir(root) as tmp:
        for rel, png in zip((Path(paths.loss_plot()).relative_to(root), BPB_PLOT), images.values()):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(png)
        md = tmp / Path(paths.report_file()).relative_to(root)
        md.write_text(markdown(header, rows, cost, notes), encoding="utf-8")
        md.with_suffix(".html").write_text(html_page(header, rows, cost, notes, images), encoding="utf-8")
    best, (executed, scratch) = min(models, key=lambda m: m.loss), study_cost(params)
    print(f"[report] {len(models)} models → {root}/ (summary.md, summary.html, plots/); best held-out loss "
          f"{best.id} {best.loss:.4f}; {executed:,} steps executed vs {scratch:,} from scratch")
