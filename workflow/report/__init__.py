"""Report: one table, the study's cost, a science check, findings, a compute section and plots from every
model's eval and log.

Reads `artifacts/eval/<id>.json` of every model and, for the trained ones (trunk checkpoints and
decays), `train_log.jsonl` and `meta.json`. Writes `reports/` atomically::

    summary.md        table of every model (lineage, tokens, cost, held-out loss/bpb, task scores), study
                      cost, science check (PASS/FAIL per expectation), data selection (what each variant kept;
                      held-out losses of models that differ only in their variant side by side), findings
                      (links the plots), compute
    summary.html      the same, self-contained (plots embedded as base64)
    plots/loss.png    training loss vs tokens: the trunk, each decay from its branch point, held-out markers
    plots/bpb.png     held-out bits-per-byte per model, one bar per domain + overall
    plots/merges.png  each merge's held-out loss against its inputs' (when the study has merges)
    plots/compute.png held-out loss vs training compute, every model of every trunk, the frontier
    plots/lr.png      final loss vs peak LR of trunks that differ only in it (when there are such trunks)
    plots/scores.png  each source's quality-score histogram with each selection's cut (when there are selections)

Science check (what a WSD study should show; a FAIL is a finding, not an error):
- every decay beats its parent trunk checkpoint on pooled held-out loss;
- every `trunk_last_k` merge beats the last trunk checkpoint;
- every decay with a `mixture` beats its twin (same branch point, length, shape, final LR, re-warm; no
  mixture) on the held-out loss of the domain it weights most.

Output bytes depend only on the inputs (fixed matplotlib style, no timestamps in the PNGs).

By job: `collect` (the models), `checks` (science check, findings, trunk settings, noise floor), `compute` (cost
and the Compute section), `selection` (the Data selection section), `plots`, `render` (Markdown and HTML).
"""

from __future__ import annotations

from pathlib import Path

from workflow import faults, paths
from workflow.io import atomic_dir
from workflow.params import Params
from workflow.report.checks import findings, noise_floor, science_checks
from workflow.report.collect import collect, domains_of
from workflow.report.compute import compute_lines, cost_line, frontier_of, lr_points, measured_cost, study_cost
from workflow.report.plots import (BPB_PLOT, MERGE_PLOT, RC, SCORE_PLOT, bpb_plot, compute_plot, loss_plot, lr_plot,
                                   merge_plot, score_plot)
from workflow.report.render import html_page, markdown, table
from workflow.report.selection import data_selection


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
    lrs = lr_points(params, models)
    selections = list(params.quality.selections)
    with matplotlib.style.context("default"), matplotlib.rc_context(RC):
        plots = {"training loss": (Path(paths.loss_plot()).relative_to(root).as_posix(),
                                   loss_plot(params.at(first), [m for m in models if m.trunk == first])),
                 "held-out bpb": (BPB_PLOT, bpb_plot(models, domains))}
        if params.merges:
            plots["merges vs inputs"] = (MERGE_PLOT, merge_plot(params, models))
        plots["loss vs compute"] = ("plots/compute.png", compute_plot(models, frontier_of(models)))
        if lrs:
            plots["LR sensitivity"] = ("plots/lr.png", lr_plot(lrs))
        if selections:
            plots["quality scores"] = (SCORE_PLOT, score_plot(selections))
    selection = data_selection(params, models)
    with atomic_dir(root) as tmp:
        for rel, png in plots.values():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(png)
            faults.point("report.plot")
        md = tmp / Path(paths.report_file()).relative_to(root)
        text = markdown(header, rows, costs, checks, notes, {alt: rel for alt, (rel, _) in plots.items()}, selection,
                        compute)
        md.write_text(text, encoding="utf-8")
        md.with_suffix(".html").write_text(html_page(text, dict(plots.values())), encoding="utf-8")
    best, (executed, scratch) = min(models, key=lambda m: m.loss), study_cost(params)
    verdicts = [c.result for c in checks]
    print(f"[report] {len(models)} models → {root}/ (summary.md, summary.html, plots/); best held-out loss "
          f"{best.id} {best.loss:.4f}; {executed:,} steps executed vs {scratch:,} from scratch; science check "
          f"{verdicts.count('PASS')} pass, {verdicts.count('FAIL')} fail, {verdicts.count('SKIP')} skip")
