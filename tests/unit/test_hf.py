"""Import of Hugging Face Llama directories (workflow/hf.py) and trunks that start from one (`from_hf`).

Nothing is downloaded: the module trains a tiny trunk (and an untied one), exports them with `export-hf`, and
imports those directories (and edited copies of them).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.unit.conftest import train_params_dict, write_train_inputs
from workflow import export, hf, paths, stages
from workflow.report.collect import describe
from workflow.io import read_json
from workflow.params import ParamsError, parse_params
from workflow.train import checkpoint as ckpt

TRAINED, UNTIED = "main@40", "untied@2"


def study_dict(**trunks) -> dict:
    """The tiny study with two layers (one per pipeline stage at PP=2): `main` trained 40 steps (a model clearly
    better than its init), `untied` 2 steps with untied embeddings, plus `trunks`; held-out loss only."""
    raw = train_params_dict(checkpoints=[40], lr=1e-2, warmup_steps=4, save_interval=100)
    raw["model"]["num_layers"] = 2
    raw["trunks"] = {"main": {}, "untied": {"checkpoints": [2], "model": {"tie_embeddings": False}}, **trunks}
    raw["eval"] = {"batch_size": 5, "max_sequences": 5, "tasks": []}
    return raw


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """cwd of the module: main@40 (evaluated) and untied@2 trained and exported to `hf/` and `hf-untied/`."""
    root = tmp_path_factory.mktemp("hf-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ARBOR_THREADS", "1")
        write_train_inputs(root)
        params = parse_params(study_dict())
        for model_id, out in ((TRAINED, "hf"), (UNTIED, "hf-untied")):
            trunk, step = model_id.split("@")
            stages.call(params, "trunk", trunk=trunk, step=int(step))
            export.run(params, model_id, out)
        stages.call(params, "evaluate", model=TRAINED)
    return root


@pytest.fixture
def here(exported, monkeypatch):
    monkeypatch.chdir(exported)
    monkeypatch.setenv("ARBOR_THREADS", "1")
    return exported


def built(trunk: str, raw: dict | None = None):
    """(scoped params, a freshly initialised GPT of `trunk`, tokenizer info)."""
    from workflow.train.loop import setup
    from workflow.train.model import build_model

    params = parse_params(raw or study_dict()).at(trunk)
    backend, tokenizer = setup(params)
    torch.manual_seed(1)
    return params, build_model(params.model, backend, tokenizer.vocab_size).eval(), tokenizer


def imported(directory: str, trunk: str = "main", raw: dict | None = None):
    params, gpt, tokenizer = built(trunk, raw)
    hf.check(directory, params.model, f"trunks.{trunk}.model", paths.tokenizer_file())
    hf.load_into(gpt, directory, params.model, tokenizer.vocab_size, f"trunks.{trunk}.model")
    return params, gpt


def logits(gpt, tokens):
    with torch.no_grad():
        return gpt(tokens, torch.arange(tokens.size(1)).expand_as(tokens), None)


def tensors(gpt) -> dict[str, torch.Tensor]:
    return {k: v for k, v in gpt.state_dict().items() if isinstance(v, torch.Tensor)}


def copy_of(src: str, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def edit_weights(directory: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "model.safetensors")
    fn(weights)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


# --- import: the exported model, exactly --------------------------------------------------------------

@pytest.mark.parametrize("model_id,directory", [(TRAINED, "hf"), (UNTIED, "hf-untied")], ids=["tied", "untied"])
def test_import_of_an_export_gives_identical_logits(here, model_id, directory):
    from workflow.evaluate.model import load_model

    trunk = model_id.split("@")[0]
    params, gpt = imported(directory, trunk)
    original = load_model(params, model_id)
    assert ("output_layer.weight" in tensors(gpt)) == (trunk == "untied")
    ours, theirs = tensors(gpt), tensors(original.model)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    tokens = torch.randint(0, original.tokenizer.vocab_size, (3, params.model.seq_length), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(gpt, tokens), original.logits(tokens))


def test_sharded_directory_imports_the_same(here, tmp_path):
    """A directory of several safetensors files named by model.safetensors.index.json (as large models are saved)."""
    from safetensors.torch import load_file, save_file

    sharded = copy_of("hf", tmp_path / "sharded")
    weights = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: weights[k] for k in keys}, sharded / file, metadata={"format": "pt"})
    (sharded / hf.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    assert [Path(p).name for p in hf.files(str(sharded))] == ["config.json", hf.INDEX, *shards, "tokenizer.json"]
    _, a = imported("hf")
    _, b = imported(str(sharded))
    assert all(torch.equal(v, tensors(b)[k]) for k, v in tensors(a).items())


def test_vocabulary_rows_are_padded_to_the_studys_size(here, tmp_path):
    """A checkpoint whose vocabulary is exactly the tokenizer's (no padding): its rows, then zero rows up to
    the study's padded size (a multiple of 128)."""
    smaller = copy_of("hf", tmp_path / "unpadded")
    _, gpt, tokenizer = built("main")
    n = tokenizer.vocab_size
    edit_config(smaller, vocab_size=n)
    edit_weights(smaller, lambda w: w.update({"model.embed_tokens.weight": w["model.embed_tokens.weight"][:n].clone()}))
    _, full = imported("hf")
    _, padded = imported(str(smaller))
    rows, full_rows = padded.embedding.word_embeddings.weight, full.embedding.word_embeddings.weight
    assert rows.shape == full_rows.shape and rows.shape[0] % 128 == 0 and rows.shape[0] > n
    assert torch.equal(rows[:n], full_rows[:n]) and not rows[n:].any()


# --- import: refusals, one line naming what differs -----------------------------------------------------

def _other_tokenizer(d: Path) -> None:
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: the same tokens, other meanings
    (d / "tokenizer.json").write_text(json.dumps(tok))


REFUSALS = {
    "shape": (lambda d: edit_config(d, hidden_size=64, intermediate_size=96),
              r"trunks\.main\.model\.hidden_size is 32 but config\.json has hidden_size 64; "
              r"trunks\.main\.model\.ffn_hidden_size is 64 but config\.json has intermediate_size 96"),
    "architecture": (lambda d: edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2"),
                     r"its architecture is GPT2LMHeadModel, not LlamaForCausalLM"),
    "rope scaling": (lambda d: edit_config(d, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}),
                     r"rope scaling 'llama3'"),
    "biases": (lambda d: edit_weights(d, lambda w: w.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)})),
               r"it has biases \(model\.layers\.0\.self_attn\.q_proj\.bias\); arbor's GPT has none"),
    "tensor shape": (lambda d: edit_weights(d, lambda w: w.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(96, 32)})),
                     r"model\.layers\.0\.mlp\.up_proj\.weight has shape \[96, 32\] but trunks\.main\.model needs \[64, 32\]"),
    "tokenizer": (_other_tokenizer, r"its tokenizer\.json is not the study's .*tokenizer\.path: .*/tokenizer\.json"),
    "pickled weights": (lambda d: ((d / "model.safetensors").rename(d / "pytorch_model.bin")),
                        r"no model\.safetensors \(pytorch_model\.bin: pickles, never read"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_import_refuses_what_is_not_this_gpt(here, tmp_path, case):
    edit, message = REFUSALS[case]
    directory = copy_of("hf", tmp_path / "edited")
    edit(directory)
    with pytest.raises(hf.HfImportError, match=message) as err:
        imported(str(directory))
    assert "\n" not in str(err.value)


def test_missing_directory_is_named(here):
    with pytest.raises(hf.HfImportError, match=r"no-such-dir: no config\.json"):
        imported("no-such-dir")


# --- a trunk that starts from the import ------------------------------------------------------------------

def continued(**keys) -> dict:
    return study_dict(cont={"from_hf": "hf", "checkpoints": [2, 4], "warmup_steps": 2, "lr": 1e-3, **keys})


def test_a_trunk_starts_from_the_import_trains_and_evaluates(here):
    params = parse_params(continued())
    stages.call(params, "trunk", trunk="cont", step=2)
    stages.call(params, "trunk", trunk="cont", step=4)
    losses = [row["loss"] for row in ckpt.read_log(paths.trunk_dir("cont", 4))]
    scratch = ckpt.read_log(paths.trunk_dir("main", 40))[0]["loss"]  # main's first step: a random init
    exported_loss = read_json(paths.eval_file(TRAINED))["heldout"]["all"]["loss"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - exported_loss) < 0.75 and losses[0] < scratch - 2, (losses, exported_loss, scratch)
    lrs = [row["lr"] for row in ckpt.read_log(paths.trunk_dir("cont", 4))]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # the re-warm: the trunk's warmup from 0 to its lr
    meta = ckpt.read_meta(paths.trunk_dir("cont", 2))
    assert meta["lineage"]["from_hf"] == "hf" and meta["lineage"]["from"] is None and meta["step"] == 2
    assert "trunk cont to step 2 (from hf (Hugging Face)" in describe(params, "cont@2")[1]
    Path("params.yaml").write_text(yaml.safe_dump(continued()))
    done = subprocess.run([sys.executable, "-m", "workflow", "evaluate", "--model", "cont@4"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    heldout = read_json(paths.eval_file("cont@4"))["heldout"]["all"]
    assert math.isfinite(heldout["loss"]) and heldout["loss"] < scratch - 2


def test_the_trunk_stage_refuses_a_mismatch_before_building_anything(here):
    shutil.rmtree(paths.trunk_root("cont"), ignore_errors=True)
    params = parse_params(continued(model={"hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(hf.HfImportError, match=r"^trunks\.cont\.from_hf: hf cannot be imported: trunks\.cont\.model\."
                                               r"hidden_size is 64 but config\.json has hidden_size 32$"):
        stages.call(params, "trunk", trunk="cont", step=2)
    assert not Path(paths.trunk_root("cont")).exists()


def test_the_checkpoint_is_an_input_of_every_training_job_of_its_trunk_in_both_engines(here):
    from workflow.engines import dvc as dvc_engine
    from workflow.engines import snakemake as smk

    raw = continued()
    raw["decays"] = {"late": {"from": "cont@4", "steps": 2}}
    params = parse_params(raw)
    files = ["hf/config.json", "hf/model.safetensors", "hf/tokenizer.json"]
    assert stages.STAGES["trunk"].inputs(params, trunk="cont", step=2)["init"] == files
    assert stages.STAGES["trunk"].inputs(params, trunk="cont", step=4)["init"] == files
    assert stages.STAGES["decay"].inputs(params, branch="late")["init"] == files
    assert stages.STAGES["trunk"].inputs(params, trunk="main", step=40)["init"] == []
    wildcards = type("Wildcards", (), {"trunk": "cont", "step": "2"})()
    assert smk.inputs(params, "trunk")(wildcards)["init"] == files
    layout, tracked = dvc_engine._layout(params)
    assert set(files) <= set(layout["trunk-cont"]["deps"]) and set(files) <= set(layout["decay-late"]["deps"])
    assert not set(files) & set(layout["trunk-main"]["deps"])
    assert "trunks.cont.from_hf" in stages.STAGES["trunk"].reads(params, trunk="cont", step=2)
    assert tracked[paths.stage_params("trunk-cont")]["trunks.cont.from_hf"] == "hf"


def test_replaced_weights_change_the_trunks_fingerprint(here, tmp_path):
    """DVC reruns the trunk's stage when a file changes; the fingerprint makes it retrain, not skip."""
    copy_of("hf", tmp_path / "hf")
    raw = continued(from_hf=str(tmp_path / "hf"))
    before = ckpt.fingerprint(parse_params(raw).at("cont"))
    edit_weights(tmp_path / "hf", lambda w: w["model.norm.weight"].mul_(2))
    assert ckpt.fingerprint(parse_params(raw).at("cont")) != before


def test_check_refuses_a_mismatched_checkpoint_naming_the_key(here, tmp_path, capsys):
    from workflow import cli

    raw = continued()
    raw["trunks"]["cont"]["model"] = {"num_layers": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exit:
        cli.main(["--params", str(tmp_path / "params.yaml"), "check"])
    assert exit.value.code == 2
    assert "trunks.cont.from_hf: hf cannot be imported: trunks.cont.model.num_layers is 3 but config.json has " \
           "num_hidden_layers 2" in capsys.readouterr().err


def test_from_hf_is_a_local_directory():
    with pytest.raises(ParamsError, match=r"trunk\.from_hf: .*is a URL; give a local directory"):
        parse_params(train_params_dict(from_hf="hf://meta-llama/Llama-3.2-1B"))


def test_a_parallel_trunk_imports_its_shards(here):
    """TP=2 x PP=2 (four processes, ~20 s): each copies its part; the losses are one process's."""
    raw = continued()
    one = parse_params(raw)
    stages.call(one, "trunk", trunk="cont", step=2)
    reference = [row["loss"] for row in ckpt.read_log(paths.trunk_dir("cont", 2))]
    shutil.rmtree(paths.trunk_root("cont"))
    raw["model"]["parallel"] = {"tp": 2, "pp": 2, "nproc_per_node": 4}  # the CLI launches by the shared layout
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "workflow", "trunk", "--trunk", "cont", "--step", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["loss"] for row in ckpt.read_log(paths.trunk_dir("cont", 2))] == pytest.approx(reference, abs=1e-5)
