"""The study schema: the default and tiny studies validate; every bad file is one readable error, exit 2."""

from __future__ import annotations

import copy
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
        assert p.model_ids()[0].startswith("trunk-")
    p = load_params(ROOT / "params.yaml")
    assert {"trunk-200", "decay-early", "merge-lawa", "merge-decays"} <= set(p.model_ids())


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
    "decay from a step that is not a checkpoint": (lambda s: s["decays"]["short"].update(from_step=13), "decays.short.from_step"),
    "bad shape": (lambda s: s["decays"]["short"].update(shape="step"), "decays.short.shape"),
    "name with a slash": (lambda s: s["decays"].update({"a/b": s["decays"]["short"]}), "decays.a/b"),
    "name with a shell character": (lambda s: s["merges"].update({"x;rm": {"models": ["trunk-12"]}}), "merges.x;rm"),
    "merge of an unknown model": (lambda s: s["merges"]["both"].update(models=["decay-nope"]), "merges.both.models.0"),
    "merge cycle": (lambda s: s["merges"].update(a={"models": ["merge-b"]}, b={"models": ["merge-a"]}), "merges.a.models"),
    "unsorted checkpoints": (lambda s: s["trunk"].update(checkpoints=[24, 12]), "trunk"),
    "batch not a multiple": (lambda s: s["trunk"].update(global_batch_size=6), "trunk"),
    "mixture of an unknown domain": (lambda s: s["trunk"].update(mixture={"poetry": 1.0}), "trunk.mixture.poetry"),
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
    assert parse_model_id("trunk-200") == ("trunk", "200")
    assert parse_model_id("merge-a_b") == ("merge", "a_b")
    with pytest.raises(ParamsError):
        parse_model_id("trunk-x")
