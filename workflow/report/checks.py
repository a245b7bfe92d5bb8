"""What the study shows: the science check (an expectation per decay, LAWA merge, mixture decay and classic
baseline; PASS / FAIL / SKIP), findings in words, which trunks differ in which settings, and the seed noise floor."""

from __future__ import annotations

import math
from dataclasses import dataclass

from workflow.params import Params
from workflow.report.collect import Model


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


def shared_step(params: Params, *trunks: str) -> int | None:
    """The last checkpoint step every one of `trunks` has (where they are compared), None when they share none."""
    common = set.intersection(*(set(params.trunks[t].checkpoints) for t in trunks))
    return max(common) if common else None


def beyond_noise(delta: float, floor: float | None) -> str:
    """A table cell: whether a loss gap clears the seed noise floor ("yes" / "no"), "—" without a floor."""
    return "—" if floor is None else ("yes" if abs(delta) > floor else "no")


def noise_floor(params: Params, models: list[Model], domain: str = "all") -> float | None:
    """The largest held-out loss gap (on `domain`) between trunks that differ only in seed, at their last shared
    checkpoint."""
    by_id = {m.id: m for m in models}
    gaps = []
    for (a, b), keys in differing(params).items():
        step = shared_step(params, a, b)
        if keys == ["seed"] and step is not None:
            la, lb = (by_id[f"{t}@{step}"].heldout.get(domain, {}).get("loss") for t in (a, b))
            if la is not None and lb is not None:
                gaps.append(abs(la - lb))
    return max(gaps) if gaps else None
