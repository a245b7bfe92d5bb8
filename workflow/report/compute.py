"""The study's cost (executed steps against training every model from scratch; measured tokens and checkpoint
bytes against `check`'s estimate) and the Compute section: loss by training compute, the frontier, WSD against
classic schedules, trunks that differ in one setting, LR sensitivity and a power-law fit over model sizes."""

from __future__ import annotations

import math
from pathlib import Path

from workflow import cost, integrity, paths
from workflow.io import read_json
from workflow.params import Params
from workflow.report.checks import beyond_noise, differing, settings, shared_step
from workflow.report.collect import Model, flops_per_token, tokens_per_step


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


def frontier_of(models: list[Model]) -> list[str]:
    """Models with a lower loss than every model of less or equal compute."""
    out, best = [], math.inf
    for m in sorted(models, key=lambda m: (m.flops, m.loss)):
        if m.loss < best:
            out.append(m.id)
            best = m.loss
    return out


def lr_points(params: Params, models: list[Model]) -> list[tuple[float, float, str]]:
    """(peak LR, held-out loss, trunk) of every trunk in a pair that differs only in peak LR, at the last checkpoint
    they all share (none without one)."""
    by_id = {m.id: m for m in models}
    names = sorted({t for pair, keys in differing(params).items() if keys == ["lr"] for t in pair})
    step = shared_step(params, *names) if names else None
    return [] if step is None else [(params.trunks[t].lr, by_id[f"{t}@{step}"].loss, t) for t in names]


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
    pairs = {(a, b, step): keys for (a, b), keys in differing(params).items()
             if len(keys) == 1 and (step := shared_step(params, a, b)) is not None}
    if not pairs:
        out += ["", "Trunks that differ in one setting: none (with a checkpoint step in common)."]
    else:
        out += ["", "Trunks that differ in one setting (at their last shared checkpoint):", "",
                "| trunks | step | setting | loss | loss | Δ | beyond noise |", "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
        for (a, b, step), keys in pairs.items():
            la, lb = by_id[f"{a}@{step}"].loss, by_id[f"{b}@{step}"].loss
            beyond = "—" if keys == ["seed"] else beyond_noise(la - lb, floor)
            out.append(f"| {a} vs {b} | {step} | {keys[0]}: {settings(params, a)[keys[0]]} vs {settings(params, b)[keys[0]]} | "
                       f"{la:.4f} | {lb:.4f} | {la - lb:+.4f} | {beyond} |")
    out += [""] + size_fit_lines(params, models)
    out += ["", f"Seed noise floor: {floor:.4f} (largest held-out loss gap between trunks differing only in seed)." if floor is not None
            else "Seed noise floor: none (no two trunks differ only in their seed)."]
    return out
