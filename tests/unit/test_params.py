"""The study schema: the default and tiny studies validate; every bad file is one readable error, exit 2."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import yaml

from tests.conftest import ROOT, TINY_PARAMS, run
from workflow.params import ParamsError, load_params, parse_params, parse_model_id


@pytest.fixture
def study() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def test_default_and_tiny_studies_validate():
    for path in (ROOT / "params.yaml", TINY_PARAMS):
        p = load_params(path)
        assert p.model_ids()[0].startswith("main@")
    p = load_params(ROOT / "params.yaml")
    assert {"main@200", "decay-early", "merge-lawa", "merge-decays"} <= set(p.model_ids())


def _broken(study: dict, edit) -> dict:
    s = copy.deepcopy(study)
    edit(s)
    return s


CASES = {
    "unknown key": (lambda s: s["trunk"].update(lr_peak=1.0), "trunk.lr_peak"),
    "unknown section": (lambda s: s.update(optimiser={}), "optimiser"),
    "wrong type": (lambda s: s["model"].update(num_layers="two"), "model.num_layers"),
    "negative size": (lambda s: s["model"].update(hidden_size=-8), "model.hidden_size"),
    "missing trunk": (lambda s: s.pop("trunk"), "trunk"),
    "decay from a step that is not a checkpoint": (lambda s: s["decays"]["short"].update({"from": "main@13"}), "decays.short.from"),
    "decay from an unknown trunk": (lambda s: s["decays"]["short"].update({"from": "wide@12"}), "decays.short.from"),
    "decay from a merge": (lambda s: s["decays"]["short"].update({"from": "merge-both"}), "decays.short.from"),
    "decay from a cosine trunk": (lambda s: s["decays"]["short"].update({"from": "cos@24"}), "decays.short.from"),
    "unknown key in a named trunk": (lambda s: s["trunks"]["cos"].update(lr_peak=1.0), "trunks.cos.lr_peak"),
    "unknown model key in a named trunk": (lambda s: s["trunks"]["cos"].update(model={"width": 3}), "trunks.cos.model.width"),
    "merge across trunks": (lambda s: s["merges"]["both"].update(models=["main@24", "cos@24"]), "merges.both.models"),
    "bad shape": (lambda s: s["decays"]["short"].update(shape="step"), "decays.short.shape"),
    "name with a slash": (lambda s: s["decays"].update({"a/b": s["decays"]["short"]}), "decays.a/b"),
    "name with a shell character": (lambda s: s["merges"].update({"x;rm": {"models": ["main@12"]}}), "merges.x;rm"),
    "merge of an unknown model": (lambda s: s["merges"]["both"].update(models=["decay-nope"]), "merges.both.models.0"),
    "merge cycle": (lambda s: s["merges"].update(a={"models": ["merge-b"]}, b={"models": ["merge-a"]}), "merges.a.models"),
    "unsorted checkpoints": (lambda s: s["trunk"].update(checkpoints=[24, 12]), "trunk"),
    "batch not a multiple": (lambda s: s["trunk"].update(global_batch_size=6), "trunk"),
    "mixture of an unknown domain": (lambda s: s["trunk"].update(mixture={"poetry": 1.0}), "trunks.main.mixture.poetry"),
    "two sources one domain": (lambda s: s["sources"]["code"].update(domain="prose"), "sources.code.domain"),
    "heads do not divide hidden": (lambda s: s["model"].update(num_attention_heads=3), "model"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_params_name_the_key(study, case):
    edit, key = CASES[case]
    with pytest.raises(ParamsError) as err:
        parse_params(_broken(study, edit))
    assert key in str(err.value)


@pytest.mark.parametrize("case", ["unknown key", "decay from a step that is not a checkpoint", "name with a slash", "wrong type"])
def test_cli_exits_2_with_one_message(tmp_path, study, case):
    edit, key = CASES[case]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_broken(study, edit)))
    for argv in (["check"], ["trunk", "--step", "12"]):
        proc = run([sys.executable, "-m", "workflow", "--params", str(bad), *argv], tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert key in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("trunk: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")


def test_stage_arguments_must_be_declared(tmp_path):
    proc = run([sys.executable, "-m", "workflow", "--params", str(TINY_PARAMS), "decay", "--branch", "nope"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr == "error: decay --branch nope: not declared by the study (declared: short, late, rewarm)\n"


def test_model_ids():
    assert parse_model_id("main@200") == ("main", "200")
    assert parse_model_id("merge-a_b") == ("merge", "a_b")
    with pytest.raises(ParamsError):
        parse_model_id("trunk-12")


def test_named_trunks_override_any_trunk_and_model_key(study):
    """`trunks.<name>` overrides generically (any key of `trunk`, model keys under `model`); the rest is shared."""
    study["trunks"]["wide"] = {"lr": 0.001, "seed": 9, "model": {"hidden_size": 128}}
    p = parse_params(study)
    wide, main = p.trunks["wide"], p.trunks["main"]
    assert (wide.lr, wide.seed, wide.model.hidden_size) == (0.001, 9, 128)
    assert (wide.warmup_steps, wide.model.num_layers, wide.checkpoints) == (main.warmup_steps, main.model.num_layers, main.checkpoints)
    assert p.at("wide").model.hidden_size == 128 and p.at("main").trunk.lr == study["trunk"]["lr"]
    assert "wide@24" in p.model_ids() and p.trunk_of("wide@24") == "wide"
    without = {k: v for k, v in study.items() if k != "trunks"}
    without["decays"] = {"d": {"from": "main@12", "steps": 2}, "dd": {"from": "decay-d", "fraction": 0.5}}
    without["merges"] = {}
    p = parse_params(without)
    assert list(p.trunks) == ["main"]  # no `trunks`: one trunk, main
    assert (p.start_step("dd"), p.decay_steps("dd"), p.end_step("dd")) == (14, 7, 21)  # a branch of a decay
    assert p.trunk_of("decay-dd") == "main"
    p = parse_params(json.loads(json.dumps(parse_params(study).model_dump(mode="json", by_alias=True))))
    assert p.trunks["wide"].model.parallel == p.model.parallel  # every trunk holds the shared layout: round trip
    study["trunks"]["wide"]["model"]["parallel"] = {"tp": 2}  # launch and cluster requests are per stage
    with pytest.raises(ParamsError, match=r"trunks\.wide\.model\.parallel: every trunk runs with .*model\.parallel"):
        parse_params(study)
