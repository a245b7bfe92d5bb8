"""Science check on the DEFAULT study: what the literature expects from decays and merges shows at this scale.

Runs `make study` (what `make run` runs after installing) on the repository's own params.yaml in a copy,
then reads the held-out evals:
  * every decay ends below its parent trunk checkpoint (WSD: the anneal cashes in the stable phase);
  * every `trunk_last_k` average (LAWA) is below the last trunk checkpoint;
  * a decay that upsamples a domain beats its twin (same branch point, length, shape and final LR, no
    upsampling) on that domain's held-out loss ("Does your data spark joy?").
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copy_repo, run
from workflow import paths
from workflow.params import Decay, Params, load_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_study(tmp_path_factory) -> tuple[Params, Path]:
    repo = copy_repo(tmp_path_factory.mktemp("default"))
    start = time.perf_counter()
    run(["make", "study", f"VENV={Path(sys.executable).parent.parent}", "CORES=2"], repo)
    print(f"\nmake study on the default params.yaml: {time.perf_counter() - start:.0f}s")
    return load_params(repo / "params.yaml"), repo


def heldout(repo: Path, model_id: str, domain: str = "all") -> float:
    return json.loads((repo / paths.eval_file(model_id)).read_text())["heldout"][domain]["loss"]


def same_except_mixture(a: Decay, b: Decay) -> bool:
    keep = {"parent", "steps", "fraction", "shape", "final_lr", "final_lr_ratio", "rewarm"}
    return a.model_dump(include=keep) == b.model_dump(include=keep)


def upsampled_twins(params: Params, repo: Path) -> list[tuple[str, str, str]]:
    """(upsampled branch, its twin, the upsampled domain): the twin keeps the trunk's mixture."""
    from workflow.train.data import domain_weights

    with contextlib.chdir(repo):  # the trunk's default mixture is proportional to the study's token counts
        trunk = domain_weights(params, params.trunk.mixture)
        mixtures = {name: domain_weights(params, d.mixture) for name, d in params.decays.items() if d.mixture}
    out = []
    for name, weights in mixtures.items():
        d = params.decays[name]
        domain = max(weights, key=lambda k: weights[k] / trunk[k])
        for twin, t in params.decays.items():
            if t.mixture is None and same_except_mixture(d, t):
                out.append((name, twin, domain))
    return out


def test_default_study_has_the_experiments():
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert len({d.parent for d in params.decays.values()}) >= 2, "decays from two trunk checkpoints"
    assert len(params.trunks) >= 3 and any(t.schedule != "wsd" for t in params.trunks.values()), "trunks and a baseline"
    assert any(m.trunk_last_k for m in params.merges.values()), "a trunk_last_k merge"
    assert any(all(i.startswith("decay-") for i in params.merge_inputs(m)) for m in params.merges), "a merge of decays"


def test_every_decay_beats_its_parent(default_study):
    params, repo = default_study
    rows = {b: (heldout(repo, f"decay-{b}"), heldout(repo, d.parent)) for b, d in params.decays.items()}
    print("decay vs parent:", {b: f"{a:.4f} < {p:.4f}" for b, (a, p) in rows.items()})
    assert all(a < p for a, p in rows.values()), rows


def test_last_k_average_beats_the_last_checkpoint(default_study):
    params, repo = default_study
    last = heldout(repo, f"main@{params.trunk.checkpoints[-1]}")
    rows = {m: heldout(repo, f"merge-{m}") for m, merge in params.merges.items() if merge.trunk_last_k}
    print(f"last-k averages vs trunk-{params.trunk.checkpoints[-1]} ({last:.4f}):", rows)
    assert rows and all(loss < last for loss in rows.values()), (rows, last)


def test_upsampled_decay_beats_its_twin_on_that_domain(default_study):
    params, repo = default_study
    pairs = upsampled_twins(params, repo)
    assert pairs, "the default study needs a decay with an upsampled domain and its twin without"
    for branch, twin, domain in pairs:
        up, base = heldout(repo, f"decay-{branch}", domain), heldout(repo, f"decay-{twin}", domain)
        print(f"{domain} held-out loss: decay-{branch} {up:.4f} vs twin decay-{twin} {base:.4f}")
        assert up < base, (branch, twin, domain, up, base)


def test_report_compares_the_trunks(default_study):
    """The report's Compute section on the default study: every model by compute, WSD + decay against the cosine
    baseline at equal compute (either verdict, stated), the trunks that differ in one setting at their shared
    step, the seed noise floor; every science check states whether it clears that floor."""
    params, repo = default_study
    md = (repo / paths.report_file()).read_text()
    compute = md.split("\n## Compute\n")[1]
    assert all(f"| {model} |" in compute for model in params.model_ids())
    verdict = re.search(r"^\| cosine@330 \| cosine \|.*\| (WSD matches or beats|WSD worse)[^|]*\|$", compute, flags=re.M)
    assert verdict, compute
    print(verdict[0])
    assert "| main vs lr_low | 200 | lr: 0.003 vs 0.0015 |" in compute and "| main vs seed2 | 200 | seed: 1234 vs 4321 |" in compute
    assert re.search(r"^Seed noise floor: \d\.\d{4} ", compute, flags=re.M)
    checks = md.split("\n## Science check\n")[1].split("\n## ")[0]
    rows = [line for line in checks.splitlines() if re.search(r"\| (PASS|FAIL)", line)]
    assert rows and all(re.search(r"(clears|within) the seed noise floor", row) for row in rows), rows
