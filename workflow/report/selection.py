"""The Data selection section: what each trunk trains on, and per data variant and source what its rule kept."""

from __future__ import annotations

from pathlib import Path

from workflow import paths
from workflow.io import read_json
from workflow.params import Params

SELECTION_HEADER = ["selection", "source", "scorer", "rule", "docs kept", "of", "kept %", "lowest kept score", "tokens kept"]


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
