"""The Data selection section: what each trunk trains on, per data variant and source what its rule kept, and the
held-out losses of models that differ only in their data variant side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workflow import paths
from workflow.io import read_json
from workflow.params import Params, parse_model_id
from workflow.report.checks import beyond_noise, differing, noise_floor, shared_step
from workflow.report.collect import Model, domains_of

SELECTION_HEADER = ["selection", "source", "scorer", "rule", "docs kept", "of", "kept %", "lowest kept score", "tokens kept"]
DATA_HEADER = ["models", "data", "held-out", "loss", "loss", "Δ", "beyond noise"]
DATA_NOTE = ("Models that differ only in their data variant (trunks that differ only in data, at their last shared "
             "checkpoint, and their decays with the same settings), held-out loss side by side: Δ is left minus right; "
             "beyond noise: |Δ| is above that domain's seed noise floor (— when no two trunks differ only in seed).")
NO_DATA_PAIRS = "No two trunks differ only in their data variant."


@dataclass
class DataSelection:
    """The section's contents: who trains on what, what each variant kept, models that differ only in data."""
    trains_on: str
    kept: list[list[str]]     # rows under SELECTION_HEADER
    compared: list[list[str]]  # rows under DATA_HEADER


def data_selection(params: Params, models: list[Model]) -> DataSelection | None:
    """The Data selection section, or None when the study declares no selections."""
    selections = list(params.quality.selections)
    if not selections:
        return None
    return DataSelection(trains_on(params), selection_rows(params, selections), data_rows(params, models))


def trains_on(params: Params) -> str:
    """One sentence: the data each trunk (and so its decays) trains on; held-out losses are on the whole split."""
    words = "; ".join(f"trunk {t} and its decays train on {f'data variant {s.data}' if s.data else 'the whole curated corpus'}"
                      for t, s in params.trunks.items())
    return f"{words[0].upper()}{words[1:]}; held-out losses are always on every source's whole held-out split."


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


def counterpart(params: Params, model_id: str, trunk: str) -> str | None:
    """The model of `trunk` trained as `model_id` is: its checkpoint at the same step, or the decay with the same
    settings from the counterpart of the parent; None when `trunk` has none."""
    kind, key = parse_model_id(model_id)
    if kind != "decay":
        return f"{trunk}@{key}" if int(key) in params.trunks[trunk].checkpoints else None
    d = params.decays[key]
    parent = counterpart(params, d.parent, trunk)
    if parent is None:
        return None
    same = d.model_dump(mode="json", exclude={"parent"})
    return next((f"decay-{b}" for b, o in params.decays.items()
                 if o.parent == parent and o.model_dump(mode="json", exclude={"parent"}) == same), None)


def data_pairs(params: Params, models: list[Model]) -> list[tuple[Model, Model]]:
    """(left, right) models that differ only in their data variant: for each two trunks that differ only in `data`,
    their last shared checkpoint, then each decay of the left trunk that has a counterpart in the right."""
    by_id = {m.id: m for m in models}
    out = []
    for (a, b), keys in differing(params).items():
        if keys != ["data"]:
            continue
        step = shared_step(params, a, b)
        lefts = [f"{a}@{step}"] if step is not None else []
        lefts += [m.id for m in models if m.kind == "decay" and m.trunk == a]
        out += [(by_id[x], by_id[y]) for x in lefts if (y := counterpart(params, x, b))]
    return out


def data_rows(params: Params, models: list[Model]) -> list[list[str]]:
    """Per pair of `data_pairs` and domain (then all): both held-out losses, Δ and whether it clears the floor."""
    domains = domains_of(params, models)
    floors = {d: noise_floor(params, models, d) for d in domains}
    variant = lambda m: params.trunks[m.trunk].data or "whole corpus"  # noqa: E731
    rows = []
    for left, right in data_pairs(params, models):
        for d in domains:
            la, lb = left.heldout.get(d, {}).get("loss"), right.heldout.get(d, {}).get("loss")
            if la is None or lb is None:
                continue
            rows.append([f"{left.id} vs {right.id}", f"{variant(left)} vs {variant(right)}", d,
                         f"{la:.4f}", f"{lb:.4f}", f"{la - lb:+.4f}", beyond_noise(la - lb, floors[d])])
    return rows
