"""Report: table numbers, study cost, science check, findings, valid plots embedded in the HTML, stable bytes, clear errors."""

from __future__ import annotations

import base64
import re
import json
from pathlib import Path

import pytest

from workflow import paths, stages
from workflow.io import write_json
from workflow.params import parse_params
from workflow.report.checks import science_checks
from workflow.report.collect import collect, trunk_log
from workflow.report.compute import fit_power_law, study_cost
from workflow.report.plots import EMA_BETA, ema

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 4 * 8  # global_batch_size × seq_length
# held-out overall loss of every model; per-domain numbers are derived from it
LOSS = {"main@10": 4.0, "main@20": 3.5, "decay-a": 3.7, "decay-b": 3.2, "merge-m": 3.3, "merge-mm": 3.4}


def make_params():
    return parse_params({
        "sources": {"p": {"paths": ["raw/p.jsonl"], "domain": "prose"}, "c": {"paths": ["raw/c.jsonl"], "domain": "code"}},
        "model": {"seq_length": 8},
        "trunk": {"checkpoints": [10, 20], "global_batch_size": 4, "micro_batch_size": 2},
        "decays": {"b": {"from": f"main@{20}", "steps": 4, "shape": "linear", "final_lr": 1e-4},
                   "a": {"from": f"main@{10}", "steps": 5, "shape": "cosine"}},
        "merges": {"mm": {"models": ["merge-m", "main@20"]}, "m": {"models": ["decay-a", "decay-b"]}},
    })


def write_log(model_id: str, steps: range) -> None:
    path = Path(paths.train_log(paths.model_dir(model_id)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "loss": 6.0 - 0.1 * s + 0.05 * (-1) ** s, "lr": 1e-3, "grad_norm": 1.0,
                                        "tokens_per_s": 1e4, "consumed_samples": 4 * s}) + "\n" for s in steps))


def write_eval(model_id: str, loss: float | None = None, code: float | None = None, tasks: dict | None = None) -> None:
    loss = LOSS[model_id] if loss is None else loss
    heldout = {"prose": {"loss": loss - 0.1, "bpb": loss / 3, "tokens": 100},
               "code": {"loss": loss + 0.1 if code is None else code, "bpb": loss / 4, "tokens": 50},
               "all": {"loss": loss, "bpb": loss / 3.5, "tokens": 150}}
    write_json(paths.eval_file(model_id), {"model": model_id, "lineage": {"kind": model_id.split("-")[0]},
                                           "heldout": heldout, "tasks": tasks or {}})


def task_scores(loss: float) -> dict:
    return {"arbor_cloze": {"acc": 0.3, "acc_stderr": 0.04, "acc_norm": 1 / loss, "acc_norm_stderr": 0.04, "samples": 100},
            "arbor_heldout": {"bits_per_byte": loss / 2, "byte_perplexity": 2.0, "word_perplexity": 50.0, "samples": 20}}


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params()
    for model_id in params.model_ids():
        write_eval(model_id, tasks=None if model_id == "main@10" else task_scores(LOSS[model_id]))
    write_log("main@10", range(1, 11))
    write_log("main@20", range(1, 21))  # cumulative
    write_log("decay-a", range(11, 16))
    write_log("decay-b", range(21, 25))
    write_json(Path(paths.trunk_dir("main", 10)) / "meta.json", {"step": 10, "tokens_seen": 321})
    return params


def table_rows(md: str) -> dict[str, dict[str, str]]:
    """The first table of the report (the models), row by model id."""
    body = md.split("\n| ", 1)[1]
    lines = ("| " + body.split("\n\n", 1)[0]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_table_cost_and_findings(study, capsys):
    stages.call(study, "report")
    md = Path(paths.report_file()).read_text()
    rows = table_rows(md)
    assert list(rows) == ["main@10", "main@20", "decay-a", "decay-b", "merge-m", "merge-mm"]
    expected = {  # tokens seen, own steps
        "main@10": (321, 10),  # meta.json's tokens_seen wins
        "main@20": (20 * TOKENS_PER_STEP, 10),
        "decay-a": (15 * TOKENS_PER_STEP, 5),
        "decay-b": (24 * TOKENS_PER_STEP, 4),
        "merge-m": ((20 + 5 + 4) * TOKENS_PER_STEP, 0),  # shared trunk counted once
        "merge-mm": ((20 + 5 + 4) * TOKENS_PER_STEP, 0),
    }
    for model_id, (tokens, own) in expected.items():
        row, loss = rows[model_id], LOSS[model_id]
        assert row["tokens seen"] == f"{tokens:,}" and row["own steps"] == str(own)
        assert row["own tokens"] == f"{own * TOKENS_PER_STEP:,}"
        assert row["all loss"] == f"{loss:.4f}" and row["all bpb"] == f"{loss / 3.5:.4f}"
        assert row["prose loss"] == f"{loss - 0.1:.4f}" and row["code bpb"] == f"{loss / 4:.4f}"
    assert rows["decay-a"]["lineage"] == "decay of main@10, 5 steps cosine → 0"
    assert rows["decay-b"]["lineage"] == "decay of main@20, 4 steps linear → 0.0001"
    assert "decay-a, decay-b" in rows["merge-m"]["lineage"]
    # one column per task (its primary metric); a model evaluated without tasks shows dashes
    assert rows["decay-b"]["arbor_cloze acc_norm"] == f"{1 / 3.2:.4f}" and rows["decay-b"]["arbor_heldout bits_per_byte"] == "1.6000"
    assert rows["main@10"]["arbor_cloze acc_norm"] == "—"

    assert study_cost(study) == (20 + 5 + 4, 10 + 20 + 15 + 24)
    assert "29 optimizer steps executed" in md and "vs 69 (2,208 tokens) to train" in md and "2.38× fewer (58% saved)" in md
    assert "decay-a: held-out loss 3.7000 vs 4.0000 for its parent main@10 (Δ -0.3000" in md
    assert "decay-b: held-out loss 3.2000 vs 3.5000 for its parent main@20 (Δ -0.3000" in md
    assert "merge-m: held-out loss 3.3000 vs inputs decay-a 3.7000, decay-b 3.2000 (Δ +0.1000 vs the best input decay-b" in md
    assert "Best held-out loss: decay-b" in md
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "reports/" in out


def test_measured_cost_beside_the_estimate(study):
    """With every trained model's meta.json: tokens trained (trunk once + each decay's own) and checkpoint bytes
    written (meta.json's file list) against `check`'s estimate for the same schedule and shape."""
    from workflow import cost
    from workflow.shapes import parameters

    stages.call(study, "report")
    assert "Estimate vs measured" not in Path(paths.report_file()).read_text()  # main@20's meta.json is missing
    steps = {"main@10": 10, "main@20": 20, "decay-a": 15, "decay-b": 24}
    for model_id, step in steps.items():
        write_json(Path(paths.model_dir(model_id)) / "meta.json",
                   {"step": step, "tokens_seen": step * TOKENS_PER_STEP, "trained_on": "cpu",
                    "files": {"checkpoint/a": {"bytes": 1000 * step}, "train_log.jsonl": {"bytes": 7}}})
    stages.call(study, "report")
    trained = (20 + 5 + 4) * TOKENS_PER_STEP
    written = 1000 * sum(steps.values()) + 7 * 4
    planned = parameters(study.model, study.tokenizer.vocab_size) * 12 * 4  # fp32 weights + 2 moments, 4 dirs
    assert cost.CHECKPOINT_BYTES["cpu"] == (4, 8)
    line = next(l for l in Path(paths.report_file()).read_text().splitlines() if l.startswith("Estimate vs measured"))
    assert f"{cost.human(trained)} tokens planned, {cost.human(trained)} trained (1.00×)" in line
    assert f"{cost.human(planned, 'B')} of trunk and decay checkpoints planned, {cost.human(written, 'B')} written " \
           f"({written / planned:.2f}×, cpu)" in line


def cells(html: str) -> str:
    """The HTML with cells' alignment attributes and the whitespace between tags dropped."""
    return re.sub(r">\s+<", "><", re.sub(r"<(td|th)[^>]*>", r"<\1>", html))


def test_plots_html_and_stable_bytes(study):
    stages.call(study, "report")
    root = Path(paths.report_dir())
    first = {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    plots = ("plots/loss.png", "plots/bpb.png", "plots/merges.png", "plots/compute.png")
    assert set(map(str, first)) == {"summary.md", "summary.html", *plots}
    html = cells(first[Path("summary.html")].decode())
    md = first[Path("summary.md")].decode()
    for plot in plots:
        assert f"]({plot})" in md
        png = first[Path(plot)]
        assert png.startswith(PNG_MAGIC) and b"matplotlib" not in png  # valid, no version stamp
        assert base64.b64encode(png).decode() in html
    assert "<td>decay-a</td>" in html and "Findings" in html and "Science check" in html and "→" in html
    assert "<h2>Compute</h2>" in html and "<th>compute (FLOPs)</th>" in html  # every section of the Markdown
    stages.call(study, "report")
    assert {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == first


def test_missing_or_wrong_eval_names_file_and_command(study):
    Path(paths.eval_file("decay-b")).unlink()
    with pytest.raises(FileNotFoundError, match=r"artifacts/eval/decay-b\.json.*python -m workflow evaluate --model decay-b"):
        stages.call(study, "report")
    assert not Path(paths.report_dir()).exists()
    write_json(paths.eval_file("decay-b"), {"model": "decay-a", "heldout": {"all": {"loss": 1.0, "bpb": 1.0}}})
    with pytest.raises(ValueError, match=r"decay-b\.json: not an eval of decay-b"):
        stages.call(study, "report")


def test_trunk_log_joins_segment_logs_and_missing_logs_only_warn(study, capsys):
    write_log("main@20", range(11, 21))  # per-segment logs instead of a cumulative one
    assert [s for s, _ in trunk_log(study.at("main"))] == list(range(1, 21))
    Path(paths.train_log(paths.decay_dir("a"))).unlink()
    stages.call(study, "report")
    assert "decay/a/train_log.jsonl is missing" in capsys.readouterr().err
    assert Path(paths.loss_plot()).read_bytes().startswith(PNG_MAGIC)


def test_trunk_only_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params({"sources": {"p": {"paths": ["x"], "domain": "prose"}}, "trunk": {"checkpoints": [5]}})
    write_log("main@5", range(1, 6))
    write_eval("main@5", loss=5.0)
    stages.call(params, "report")
    md = Path(paths.report_file()).read_text()
    assert table_rows(md)["main@5"]["own steps"] == "5" and "1.00× fewer (0% saved)" in md
    assert "No decays or LAWA merges to check." in md and not Path("reports/plots/merges.png").exists()


def test_science_check(tmp_path, monkeypatch):
    """Decay vs its branch point, LAWA merge vs the last checkpoint, mixture decay vs its twin on the upweighted
    domain (PASS / FAIL with the numbers; SKIP naming what to add when there is no twin)."""
    monkeypatch.chdir(tmp_path)
    params = parse_params({
        "sources": {"p": {"paths": ["x"], "domain": "prose"}, "c": {"paths": ["y"], "domain": "code"}},
        "trunk": {"checkpoints": [10, 20]},
        "decays": {"plain": {"from": f"main@{20}", "steps": 4, "final_lr": 1e-4},
                   "mix": {"from": f"main@{20}", "steps": 4, "final_lr": 1e-4, "mixture": {"prose": 1.0, "code": 3.0}},
                   "lonely": {"from": f"main@{10}", "steps": 2, "mixture": {"prose": 2.0, "code": 1.0}}},
        "merges": {"lawa": {"trunk_last_k": 2}},
    })
    evals = {"main@10": (4.0, None), "main@20": (3.5, None), "decay-plain": (3.2, 3.4), "decay-mix": (3.3, 3.1),
             "decay-lonely": (4.1, None), "merge-lawa": (3.6, None)}
    for model_id, (loss, code) in evals.items():
        write_log(model_id, range(1, 3)) if not model_id.startswith("merge") else None
        write_eval(model_id, loss, code)
    checks = {(c.check.split()[0], c.model): c for c in science_checks(params, collect(params))}
    assert [(c.baseline, c.domain, c.result) for c in checks.values()] == [
        ("main@20", "all", "PASS"), ("main@20", "all", "PASS"), ("main@10", "all", "FAIL"),  # decays vs branch point
        ("main@20", "all", "FAIL"),                                                              # LAWA merge: 3.6 > 3.5
        ("decay-plain", "code", "PASS"),                                                          # 3.1 < 3.4 on code
        (None, "prose", "SKIP")]                                                                  # no twin
    assert checks["mixture", "decay-lonely"].note.startswith("no twin")
    stages.call(params, "report")
    md = Path(paths.report_file()).read_text()
    assert "| mixture decay beats its twin on its upweighted domain | decay-mix | decay-plain | held-out loss (code) | " \
           "3.1000 | 3.4000 | -0.3000 | PASS |" in md
    assert "| LAWA merge beats the last checkpoint | merge-lawa | main@20 | held-out loss (all) | 3.6000 | 3.5000 | +0.1000 | FAIL |" in md
    assert "the last 2 trunk checkpoints (main@10, main@20)" in table_rows(md)["merge-lawa"]["lineage"]


def test_ema_is_seeded_and_light():
    assert ema([1.0, 1.0]) == [1.0, 1.0]
    assert ema([0.0], start=1.0) == [pytest.approx(EMA_BETA)]


def test_power_law_fit_recovers_known_parameters():
    """L(C) = a·C^(−b) + c from exact synthetic points: the fit returns a, b and c."""
    a, b, c = 40.0, 0.25, 2.0
    compute = [1e9 * 2 ** i for i in range(8)]
    fa, fb, fc = fit_power_law(compute, [a * x ** -b + c for x in compute])
    assert fb == pytest.approx(b, rel=1e-3) and fc == pytest.approx(c, rel=1e-3) and fa == pytest.approx(a, rel=1e-2)


def write_selection(name: str, rule: dict) -> None:
    """What `select` and `tokenize_selected` leave for the report: the variant's stats and its tokens' stats."""
    write_json(Path(paths.selected_dir(name)) / "stats.json", {
        "scorer": "q", **rule, "bin_edges": [i / 4 for i in range(5)],
        "sources": {s: {"docs": 40, "kept": 10, "lowest_kept": 0.75, "histogram": [10, 10, 10, 10]} for s in ("p", "c")}})
    for domain in ("prose", "code"):
        write_json(paths.tokens_stats(domain, name), {"train": {"tokens": 100}})


def test_models_that_differ_only_in_data_side_by_side(tmp_path, monkeypatch):
    """Trunks that differ only in `data` (last checkpoints) and their decays with the same settings: held-out loss
    per domain and overall side by side, Δ, and whether it clears that domain's seed noise floor."""
    monkeypatch.chdir(tmp_path)
    study = {
        "sources": {"p": {"paths": ["x"], "domain": "prose"}, "c": {"paths": ["y"], "domain": "code"}},
        "trunk": {"checkpoints": [10, 20]},
        "trunks": {"main": {}, "top": {"data": "top"}, "seed2": {"seed": 7}, "lr_low": {"data": "top", "lr": 1e-4}},
        "decays": {"d": {"from": "main@20", "steps": 4}, "dt": {"from": "top@20", "steps": 4},
                   "only": {"from": "main@10", "steps": 2}},  # top has no decay from step 10: no counterpart
        "quality": {"scorers": {"q": {"kind": "fasttext", "model": "q.bin"}},
                    "selections": {"top": {"scorer": "q", "keep_fraction": 0.25}}},
    }
    params = parse_params(study)
    evals = {"main@20": (3.5, 3.6), "top@20": (3.3, 3.7),  # prose 3.4 vs 3.2, code 3.6 vs 3.7, all 3.5 vs 3.3
             "seed2@20": (3.52, 3.9),                         # floors: prose and all 0.02, code 0.3
             "decay-d": (3.0, 3.1), "decay-dt": (3.01, 3.05)}
    for model_id in params.model_ids():
        loss, code = evals.get(model_id, (4.0, None))
        write_log(model_id, range(1, 3))
        write_eval(model_id, loss, code)
    write_selection("top", {"keep_fraction": 0.25})
    stages.call(params, "report")
    md = Path(paths.report_file()).read_text()
    section = md.split("## Data selection")[1].split("## Findings")[0]
    rows = [line for line in section.splitlines() if " vs " in line and line.startswith("| ")]
    assert rows == [
        "| main@20 vs top@20 | whole corpus vs top | prose | 3.4000 | 3.2000 | +0.2000 | yes |",
        "| main@20 vs top@20 | whole corpus vs top | code | 3.6000 | 3.7000 | -0.1000 | no |",
        "| main@20 vs top@20 | whole corpus vs top | all | 3.5000 | 3.3000 | +0.2000 | yes |",
        "| decay-d vs decay-dt | whole corpus vs top | prose | 2.9000 | 2.9100 | -0.0100 | no |",
        "| decay-d vs decay-dt | whole corpus vs top | code | 3.1000 | 3.0500 | +0.0500 | no |",
        "| decay-d vs decay-dt | whole corpus vs top | all | 3.0000 | 3.0100 | -0.0100 | no |"]
    html = cells(Path(paths.report_dir(), "summary.html").read_text())
    assert "<tr><td>decay-d vs decay-dt</td><td>whole corpus vs top</td><td>code</td><td>3.1000</td><td>3.0500</td>" \
           "<td>+0.0500</td><td>no</td></tr>" in html
    stages.call(parse_params({**study, "trunks": {"main": {}, "top": {"data": "top"}}}), "report")  # no seed pair: no floor
    assert "| main@20 vs top@20 | whole corpus vs top | all | 3.5000 | 3.3000 | +0.2000 | — |" in \
        Path(paths.report_file()).read_text()


def test_compute_section_compares_trunks_at_equal_steps_and_compute(tmp_path, monkeypatch):
    """Compute: every model's FLOPs (tokens x FLOPs per token), the frontier, WSD + decay vs a cosine baseline at
    equal compute, trunks differing in one setting at their last shared checkpoint, the seed noise floor; every
    science check says whether it clears that floor."""
    from workflow.shapes import flops_per_token

    monkeypatch.chdir(tmp_path)
    params = parse_params({
        "sources": {"p": {"paths": ["x"], "domain": "prose"}, "c": {"paths": ["y"], "domain": "code"}},
        "model": {"seq_length": 8},
        "trunk": {"checkpoints": [10, 20], "global_batch_size": 4, "micro_batch_size": 2, "lr": 0.003},
        "trunks": {"main": {}, "lr_low": {"lr": 0.0015, "checkpoints": [10]}, "seed2": {"seed": 7, "checkpoints": [10]},
                   "cos": {"schedule": "cosine", "checkpoints": [24], "warmup_steps": 2}},
        "decays": {"late": {"from": "main@20", "steps": 4}},
    })
    losses = {"main@10": 4.0, "main@20": 3.5, "lr_low@10": 4.3, "seed2@10": 4.1, "cos@24": 3.45, "decay-late": 3.3}
    for model_id, loss in losses.items():
        write_log(model_id, range(1, 3))
        write_eval(model_id, loss)
    stages.call(params, "report")
    md = Path(paths.report_file()).read_text()
    compute = md.split("## Compute")[1]
    per_token = flops_per_token(params.model, params.tokenizer.vocab_size)
    assert f"| decay-late | main | {24 * TOKENS_PER_STEP:,} | {24 * TOKENS_PER_STEP * per_token:.3e} | 3.3000 |" in compute
    assert "frontier (lowest loss so far by compute): main@10, main@20, decay-late." in compute  # cos@24: same compute
    assert re.search(r"\| cos@24 \| cosine \| \S+ \| 3\.4500 \| decay-late \| \S+ \| 3\.3000 \| -0\.1500 \| WSD matches or beats \|",
                     compute), compute
    # lr_low and seed2 stop at 10: compared with main@10, not main@20
    assert "| main vs lr_low | 10 | lr: 0.003 vs 0.0015 | 4.0000 | 4.3000 | -0.3000 | yes |" in compute
    assert "| main vs seed2 | 10 | seed: 1234 vs 7 | 4.0000 | 4.1000 | -0.1000 | — |" in compute
    assert "Seed noise floor: 0.1000" in compute
    checks = md.split("## Science check")[1].split("##")[0]
    assert "| decay beats its branch point | decay-late | main@20 |" in checks and "clears the seed noise floor 0.1000" in checks
    assert (Path(paths.report_dir()) / "plots/lr.png").read_bytes().startswith(PNG_MAGIC)
