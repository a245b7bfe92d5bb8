"""`make bench` plumbing: result rows and targets, the collected table, every script's CLI, the skip path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import dag_noop, run_all
from bench.common import Row, meets, write_result
from workflow.params import parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_targets_apply_to_the_ratio_else_the_value():
    assert meets(1.5, ">= 1.5") and not meets(1.49, ">= 1.5") and meets(1.0, "<= 1.1") and not meets(1.2, "< 1.2")
    assert meets(None, ">= 1") is None
    with pytest.raises(ValueError, match="expected"):
        meets(1.0, "about 1")
    assert Row("tok", 2e6, "tok/s", "megatron", 1.6e6, 1.25, ">= 1.5").met is False
    assert Row("agree", 99.6, "%", target=">= 99").met is True
    assert Row("rss", 700, "MB", "2 inputs", 690, 1.01).met is None


def fake_results(tmp_path: Path) -> dict:
    """Results as run_all collects them: two measured scripts, one skipped, one failed."""
    write_result(str(tmp_path / "tok.json"), "tokenize", [
        Row("tokenize (30 MB, 2 workers)", 1_118_381.4, "tok/s", "Megatron-LM preprocess_data approach", 795_790.2, 1.4054,
            ">= 1.5", note="byte-identical .bin/.idx"),
        Row("tokenize vs raw encoder", 1_118_381.4, "tok/s", "encode_batch_fast in memory", 1_035_389.0, 1.08, ">= 0.8")])
    write_result(str(tmp_path / "merge.json"), "merge", [Row("merge peak RSS, 8 inputs", 751.2, "MB", "2 inputs", 750.3, 1.001)])
    write_result(str(tmp_path / "gpu.json"), "gpu_smoke", [], skipped="no CUDA device")
    scripts = [{"failed": None, **json.loads((tmp_path / f).read_text()), "args": [], "seconds": 60.0}
               for f in ("tok.json", "merge.json", "gpu.json")]
    scripts.append({"script": "curate", "skipped": None, "rows": [], "failed": "exit 1", "args": [], "seconds": 3.0})
    machine = {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 24, "gpu": "no GPU", "python": "3.11.9", "os": "Linux 6"}
    return {"started": "2026-01-01T00:00:00", "seconds": 183.0, "quick": False, "machine": machine, "scripts": scripts}


def test_text_table_lines_up_every_figure_with_its_baseline_and_status(tmp_path):
    lines = run_all.text_table(fake_results(tmp_path)).splitlines()
    header, rule, body = lines[0], lines[1], lines[2:7]
    assert header.split() == ["figure", "value", "baseline", "ratio", "target", "met"]
    col = header.index("baseline")
    assert [ln[col:].split(":")[0] for ln in body[:3]] == ["Megatron-LM preprocess_data approach", "encode_batch_fast in memory",
                                                          "2 inputs"]
    assert body[0].endswith("1.41×  >= 1.5   NO") and body[1].endswith("1.08×  >= 0.8  yes")
    assert "1,118,381 tok/s" in body[0] and ": 795,790 tok/s" in body[0] and "751 MB" in body[2]
    assert "bench/gpu_smoke.py" in body[3] and body[3].split()[1] == "skipped"
    assert "bench/curate.py" in body[4] and body[4].split()[1] == "FAILED"
    assert len(rule.split()) == 6
    text = "\n".join(lines)
    for part in ("byte-identical .bin/.idx", "bench/gpu_smoke.py: no CUDA device", "bench/curate.py: exit 1",
                 "AMD EPYC, 2 cores, 24 GiB, no GPU", "total 3.0 min"):
        assert part in text


def test_markdown_table_has_one_row_per_figure(tmp_path):
    md = run_all.markdown_table(fake_results(tmp_path)).splitlines()
    table = [ln for ln in md if ln.startswith("|")]
    assert len(table) == 2 + 5 and all(ln.count("|") == 7 for ln in table)
    assert "1.41× (target >= 1.5: NOT met)" in table[2] and "1.08× (target >= 0.8: met)" in table[3]
    assert "| skipped |  |  | no CUDA device |" in table[5] and "`bench/curate.py`" in table[6]
    assert md[-1].startswith("Measured with `make bench` (3 min, 2026-01-01) on AMD EPYC")


def test_every_script_takes_json_and_help_is_fast():
    scripts = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("common", "run_all", "__init__"))
    assert set(scripts) == set(run_all.SCRIPTS), "bench/run_all.py must run every script"
    for name in scripts:
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"], capture_output=True,
                              text=True, timeout=30, cwd=ROOT)
        assert proc.returncode == 0 and "--json" in proc.stdout, (name, proc.stderr[-2000:])


def test_skipped_scripts_show_in_the_table_with_their_reason(tmp_path):
    """`make bench-quick` skips make_run; on a machine without CUDA gpu_smoke says why it did not run."""
    import torch

    names = ["make_run"] + ([] if torch.cuda.is_available() else ["gpu_smoke"])
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--only", *names,
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scripts = json.loads(out.read_text())["scripts"]
    assert [s["script"] for s in scripts] == names and scripts[0]["args"] == ["--skip"]
    assert all(s["skipped"] and s["failed"] is None and not s["rows"] for s in scripts)
    assert "bench/make_run.py: --skip" in proc.stdout
    if "gpu_smoke" in names:
        assert "bench/gpu_smoke.py: no CUDA device is visible" in proc.stdout


def test_dag_noop_study_has_the_branches_and_stays_valid():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    big = dag_noop.branched(raw, 50)
    params = parse_params(big)
    assert len(params.decays) == 50 and set(raw["decays"]) < set(params.decays)
    assert {params.start_step(b) for b in params.decays} == set(params.trunks["main"].checkpoints)
    dry = "rule trunk:\n    input: a\n    output: artifacts/trunk/step-200\n    log: x\nrule tokenize:\n" \
          "    output: artifacts/tokens/code.bin, artifacts/tokens/code.idx\n"
    assert dag_noop.dry_run_outputs(dry) == ["artifacts/trunk/step-200", "artifacts/tokens/code.bin", "artifacts/tokens/code.idx"]
