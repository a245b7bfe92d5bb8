"""The report's figures (matplotlib, PNG bytes that depend only on the inputs: fixed style, no version stamp)."""

from __future__ import annotations

import io
from pathlib import Path

from workflow import paths
from workflow.io import read_json
from workflow.params import Params
from workflow.report.collect import Model, read_log, tokens_per_step, trunk_log

EMA_BETA = 0.9  # weight of the running average; ~10-step window
PNG_METADATA = {"Software": None}  # no matplotlib version in the PNG: stable bytes
RC = {"svg.hashsalt": "arbor", "figure.dpi": 100, "savefig.dpi": 110, "font.size": 9}
BPB_PLOT = "plots/bpb.png"  # relative to the report dir, next to paths.loss_plot()
MERGE_PLOT = "plots/merges.png"
SCORE_PLOT = "plots/scores.png"


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
