"""The report as text: the models table, the Data selection table, and the Markdown and self-contained HTML pages."""

from __future__ import annotations

import base64

from workflow.report.checks import Check
from workflow.report.collect import Model
from workflow.report.selection import DATA_HEADER, DATA_NOTE, NO_DATA_PAIRS, SELECTION_HEADER, DataSelection

PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "bits_per_byte", "word_perplexity")  # a task's table column
TABLE_NOTE = ("Tokens seen of a merge: the training behind its inputs, the shared trunk counted once. Own steps / "
              "own tokens: the training cost of the model's own job (trunk: its segment; merges cost none). Task "
              "columns: lm-eval scores (acc: higher is better; bits_per_byte, perplexity: lower is better).")
NO_CHECKS = "No decays or LAWA merges to check."
CHECK_HEADER = ["check", "model", "baseline", "metric", "model value", "baseline value", "Δ", "result"]


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


def check_row(c: Check) -> list[str]:
    """The cells of one science check, under CHECK_HEADER."""
    delta = "—" if c.result == "SKIP" else f"{c.value - c.base:+.4f}"
    return [c.check, c.model, c.baseline or "—", f"held-out loss ({c.domain})", _num(c.value),
            _num(c.base), delta, f"{c.result}{': ' + c.note if c.note else ''}"]


def _md_table(header: list[str], rows: list[list[str]], text_columns: int) -> list[str]:
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(header: list[str], rows: list[list[str]], costs: list[str], checks: list[Check], notes: list[str],
             plots: dict[str, str], selection: DataSelection | None, compute: list[str]) -> str:
    lines = ["# Study report", "", *_md_table(header, rows, 2), "", TABLE_NOTE, "", *(x for c in costs for x in (c, "")),
             "## Science check", ""]
    lines += _md_table(CHECK_HEADER, [check_row(c) for c in checks], 4) if checks else [NO_CHECKS]
    if selection:
        lines += ["", "## Data selection", "", selection.trains_on, "", *_md_table(SELECTION_HEADER, selection.kept, 4), ""]
        lines += [DATA_NOTE, "", *_md_table(DATA_HEADER, selection.compared, 3)] if selection.compared else [NO_DATA_PAIRS]
    lines += ["", "## Findings", ""] + [f"- {n}" for n in notes] + ["", "## Plots", ""]
    lines += [f"![{alt}]({rel})\n" for alt, rel in plots.items()]
    return "\n".join(lines) + "\n## Compute\n\n" + "\n".join(compute) + "\n"


HTML_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Study report</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}</style>
</head><body>
"""


def html_page(md: str, images: dict[str, bytes]) -> str:
    """The Markdown page as one self-contained HTML file (CommonMark + tables, markdown-it-py), each plot
    (`images`: its relative path in the Markdown -> PNG bytes) embedded as base64."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    for rel, png in images.items():
        body = body.replace(f'src="{rel}"', f'src="data:image/png;base64,{base64.b64encode(png).decode()}"')
    return f"{HTML_HEAD}{body}</body></html>\n"
