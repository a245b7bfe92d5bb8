"""Evaluation: held-out loss/bpb, the local task data, the lm-eval model class, the eval JSON and `dvc metrics show`.

The trained study (one trunk checkpoint, held-out split, local task data) is built once per module by
`build_study`, which test_export.py reuses.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.unit.conftest import TRAIN_DOMAINS, _train_docs, train_params_dict, write_train_inputs
from workflow import stages
from workflow import paths
from workflow.engines import dvc as dvc_engine
from workflow.errors import StageError
from workflow.evaluate import taskdata
from workflow.evaluate.heldout import heldout_windows
from workflow.io import read_json, write_jsonl_zst
from workflow.params import parse_params

MODEL = "main@2"
LOCAL_TASKS = {"examples": 12, "context_words": 8, "continuation_words": 3}


def study_params() -> dict:
    return {**train_params_dict(checkpoints=[2]),
            "eval": {"batch_size": 4, "max_sequences": 5, "local_tasks": LOCAL_TASKS}}


def build_study(root: Path):
    """In `root` (the cwd): tiny tokenizer/token files, the curated held-out split, main@2 trained, task data."""

    write_train_inputs(root)
    for domain in TRAIN_DOMAINS:  # the held-out documents the token files were built from
        write_jsonl_zst(root / paths.curated_dir(domain) / "heldout/part-00000.jsonl.zst",
                        [{"text": t, "domain": domain} for t in _train_docs(domain, 60, 0)[50:]])
    params = parse_params(study_params())
    stages.call(params, "trunk", trunk="main", step=2)
    stages.call(params, "eval_tasks")
    return params


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ARBOR_THREADS", "1")
        params = build_study(root)
        stages.call(params, "evaluate", model=MODEL)
    return root, params


@pytest.fixture
def in_study(study, monkeypatch):
    root, params = study
    monkeypatch.chdir(root)
    monkeypatch.setenv("ARBOR_THREADS", "1")
    return params


# --- held-out loss and the eval JSON -------------------------------------------------------------

def test_eval_json_schema_values_and_determinism(in_study):
    params = in_study
    out = read_json(paths.eval_file(MODEL))
    assert out["model"] == MODEL and set(out) == {"model", "lineage", "heldout", "tasks"}
    lineage = out["lineage"]
    assert lineage["kind"] == "trunk" and lineage["step"] == 2 and lineage["tokens_seen"] == 2 * 4 * 32
    assert len(lineage["fingerprint"]) == 64 and set(lineage["revision"]) == {"git", "git_dirty", "dvc"}
    assert set(out["heldout"]) == {"prose", "code", "all"}
    pooled_nats = pooled_bytes = 0.0
    for domain in TRAIN_DOMAINS:
        r = out["heldout"][domain]
        assert set(r) == {"loss", "bpb", "tokens"} and 0 < r["loss"] < 10
        assert r["tokens"] == 5 * params.model.seq_length  # max_sequences full windows
        stats = read_json(paths.tokens_stats(domain))["heldout"]
        nbytes = r["tokens"] * stats["bytes"] / stats["tokens"]
        assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / math.log(2) / nbytes)
        pooled_nats += r["loss"] * r["tokens"]
        pooled_bytes += nbytes
    a = out["heldout"]["all"]
    assert a["tokens"] == 10 * params.model.seq_length
    assert a["loss"] == pytest.approx(pooled_nats / a["tokens"])
    assert a["bpb"] == pytest.approx(pooled_nats / math.log(2) / pooled_bytes)
    cloze, held = out["tasks"]["arbor_cloze"], out["tasks"]["arbor_heldout"]
    meta = read_json(Path(paths.tasks_dir()) / "meta.json")["domains"]
    assert cloze["samples"] == sum(d["cloze"] for d in meta.values()) and 0 <= cloze["acc"] <= 1 and "acc_norm_stderr" in cloze
    assert held["samples"] == sum(d["heldout"] for d in meta.values())
    assert 0 < held["bits_per_byte"] < 20 and held["byte_perplexity"] == pytest.approx(2 ** held["bits_per_byte"])
    stages.call(params, "evaluate", model=MODEL)  # deterministic
    assert read_json(paths.eval_file(MODEL)) == out


def test_heldout_windows(train_study):
    prefix = paths.tokens_prefix("prose", "heldout")
    tokens, labels, mask = heldout_windows(prefix, 32, None)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    total = sum(len(IndexedDataset(prefix)[i]) for i in range(len(IndexedDataset(prefix))))
    assert int(mask.sum()) == total - 1  # every held-out token predicted once (but the first)
    assert torch.equal(tokens[0, 1:], labels[0, :-1]) and torch.equal(tokens[1, 0], labels[0, -1])
    capped = heldout_windows(prefix, 32, 2)
    assert capped[0].shape == (2, 32) and bool(capped[2].all())


def test_an_evaluate_job_imports_neither_torchdynamo_nor_transformers(in_study):
    """Start-up costs an evaluate job does not pay (workflow/mcore.py): TorchDynamo and Inductor, which
    megatron-core's torch.compile decorations import (a trunk job imports TorchDynamo anyway: torch.optim does),
    and boto3, for megatron-core's datasets on S3; and lm-eval's environment report, which imports transformers
    and runs pip (`harness.without_env_report`)."""
    Path("params.yaml").write_text(yaml.safe_dump(study_params()))
    job = subprocess.run([sys.executable, "-X", "importtime", "-m", "workflow", "evaluate", "--model", MODEL],
                         capture_output=True, text=True)
    assert job.returncode == 0, job.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in job.stderr.splitlines() if line.startswith("import time:")}
    assert {"megatron.core.models.gpt", "megatron.core.jit", "lm_eval.evaluator"} <= imported, "no model or no lm-eval"
    assert not {"torch._dynamo", "torch._inductor", "transformers", "botocore"} & imported  # boto3: its attempt shows


def test_evaluate_missing_model(in_study):
    declared = parse_params(train_params_dict(checkpoints=[2, 4]))  # main@4 is declared but was never trained
    with pytest.raises(StageError, match="main@4.*build it first"):
        stages.call(declared, "evaluate", model="main@4")


def test_missing_task_data_names_the_stage(in_study, monkeypatch, tmp_path):
    from workflow.evaluate.harness import check_local_data

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=r"artifacts/tasks/heldout\.jsonl is missing \(data of the local task arbor_heldout\).*python -m workflow eval_tasks"):
        check_local_data(["arbor_heldout", "arbor_cloze"])
    check_local_data(["hellaswag"])  # not local: nothing to check here


def test_task_runs_are_offline():
    """Importing the harness switches `datasets` and `huggingface_hub` to offline mode before they load."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    code = ("import workflow.evaluate.harness, lm_eval.evaluator, datasets, huggingface_hub.constants as hub; "
            "assert datasets.config.HF_DATASETS_OFFLINE and hub.HF_HUB_OFFLINE")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[2])


# --- the lm-eval model class ---------------------------------------------------------------------

def test_arbor_lm_scores_match_direct_computation(in_study):
    """loglikelihood = Σ log p(continuation tokens) from the model's logits, independent of batching and
    padding; is_greedy when the continuation is the argmax; rolling = the same sum after the EOD token."""
    from lm_eval.api.instance import Instance

    from workflow.evaluate.harness import ArborLM
    from workflow.evaluate.model import load_model

    loaded = load_model(in_study, MODEL)
    lm = ArborLM(loaded, batch_size=3, max_length=in_study.model.seq_length)
    rng = random.Random(0)
    requests = [([rng.randrange(1, 300) for _ in range(rng.randint(1, 20))],
                 [rng.randrange(1, 300) for _ in range(rng.randint(1, 8))]) for _ in range(7)]

    def direct(context, continuation):
        ids = (context + continuation)[-(lm.max_length + 1):]
        logprobs = torch.log_softmax(loaded.logits(torch.tensor([ids[:-1]]))[0], -1)
        targets = ids[len(ids) - len(continuation):]
        rows = logprobs[len(ids) - 1 - len(continuation):]
        return float(sum(rows[i, t] for i, t in enumerate(targets))), [int(r.argmax()) for r in rows]

    got = lm._loglikelihood_tokens([(("", ""), c, k) for c, k in requests])
    one_by_one = ArborLM(loaded, batch_size=1, max_length=lm.max_length)._loglikelihood_tokens(
        [(("", ""), c, k) for c, k in requests])
    for (context, continuation), (logprob, greedy), (single, _) in zip(requests, got, one_by_one):
        want, argmax = direct(context, continuation)
        assert logprob == pytest.approx(want, abs=1e-4) and single == pytest.approx(want, abs=1e-4)
        assert greedy == (argmax == continuation)
    context = requests[0][0]
    _, argmax = direct(context, [0])
    assert lm._loglikelihood_tokens([(("", ""), context, argmax)])[0][1]  # the model's own choice is greedy

    text = "the cat sat on the mat and then slept under the tree"
    ids = lm.tok_encode(text)
    assert len(ids) < lm.max_length  # one window
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
    assert rolling == pytest.approx(direct([lm.eot_token_id], ids)[0], abs=1e-4)

    greedy_ids = list(ids)  # generation: greedy tokens (within the tokenizer's vocabulary), cut at a stop string
    for _ in range(4):
        greedy_ids.append(int(loaded.logits(torch.tensor([greedy_ids[-lm.max_length:]]))[0, -1, :300].argmax()))
    expected = lm.tok_decode(greedy_ids[len(ids):])
    assert lm.eot_token_id not in greedy_ids[len(ids):]
    (generated,) = lm.generate_until([Instance("generate_until", {}, (text, {"max_gen_toks": 4}), 0)], disable_tqdm=True)
    assert generated == expected
    stop = expected[1:3]
    (cut,) = lm.generate_until([Instance("generate_until", {}, (text, {"max_gen_toks": 4, "until": [stop]}), 0)], disable_tqdm=True)
    assert cut == expected.split(stop)[0]


# --- the local task data -------------------------------------------------------------------------

def _docs(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return ["\n".join(" ".join(rng.choice(vocab) for _ in range(5)) for _ in range(words // 5)) for _ in range(n)]


def test_cloze_items_are_well_formed():
    from workflow.params import LocalTasks

    cfg = LocalTasks(examples=30, choices=4, context_words=12, continuation_words=3, seed=3)
    docs = _docs(6, 40, 1) + ["too short"]
    items = taskdata.cloze_items(docs, "prose", cfg)
    assert len(items) == 30 and items == taskdata.cloze_items(docs, "prose", cfg)  # deterministic
    assert {i["doc"] for i in items} <= set(range(6)) and len({(i["doc"], i["context"]) for i in items}) == 30
    assert {i["label"] for i in items} == set(range(4))  # the answer's position varies
    for item in items:
        options, answer = item["choices"], item["choices"][item["label"]]
        assert len(options) == len(set(options)) == 4
        assert item["context"] + answer in docs[item["doc"]]  # the true continuation, whitespace included
        assert len(taskdata.WORD.findall(item["context"])) == 12
        space = answer[: len(answer) - len(answer.lstrip())]
        assert all(o.startswith(space) and not o[len(space):][:1].isspace() for o in options)
        assert all(len(taskdata.WORD.findall(o)) == 3 for o in options)
    single = taskdata.cloze_items(docs[:1], "code", cfg)  # one document: distractors from far away in it
    assert single and all(len(set(i["choices"])) == 4 for i in single)
    assert taskdata.cloze_items(["too short"], "code", cfg) == []


def test_heldout_items_cut_at_word_boundaries():
    from workflow.params import LocalTasks

    docs = ["word " * 100, "", "short doc"]
    items = taskdata.heldout_items(docs, "prose", LocalTasks(examples=5, doc_chars=53))
    assert [i["doc"] for i in items] == [0, 2] and items[1]["text"] == "short doc"
    assert items[0]["text"] == ("word " * 10).strip() and len(items[0]["text"]) <= 53


def test_task_yamls_read_what_eval_tasks_writes(in_study):
    """Every local task's data file is written by `eval_tasks` (and the DAG edge exists in both engines)."""
    written = {f"{paths.tasks_dir()}/{name}" for name in (taskdata.CLOZE_FILE, taskdata.HELDOUT_FILE)}
    assert set(taskdata.local_tasks()) == {"arbor_cloze", "arbor_heldout"}
    assert {f for files in taskdata.local_tasks().values() for f in files} == written
    for f in written:
        assert Path(f).is_file() and Path(f).stat().st_size > 0
    evaluate_inputs = stages.STAGES["evaluate"].inputs
    assert evaluate_inputs(in_study, model=MODEL)["tasks"] == [paths.tasks_dir()]
    dvc = dvc_engine.document(in_study)["stages"]
    assert dvc["eval_tasks"]["outs"] == [paths.tasks_dir()] and paths.tasks_dir() in dvc["evaluate-trunk-main"]["do"]["deps"]
    no_local = parse_params({**train_params_dict(checkpoints=[2]), "eval": {"tasks": ["hellaswag"]}})
    assert evaluate_inputs(no_local, model=MODEL)["tasks"] == [] and "eval_tasks" not in dvc_engine.document(no_local)["stages"]


def test_eval_tasks_refuses_a_too_small_heldout_split(in_study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for domain in TRAIN_DOMAINS:
        write_jsonl_zst(tmp_path / paths.curated_dir(domain) / "heldout/part-00000.jsonl.zst", [{"text": "a few words"}])
    with pytest.raises(StageError, match="eval.local_tasks.context_words"):
        stages.call(in_study, "eval_tasks")
    assert not Path(paths.tasks_dir()).exists()


# --- dvc metrics ---------------------------------------------------------------------------------

def test_dvc_metrics_show_lists_every_eval(in_study, tmp_path):
    """The generated dvc.yaml's top-level `metrics: [artifacts/eval]` makes `dvc metrics show` list each model's numbers."""
    out = read_json(Path(paths.eval_file(MODEL)))
    repo = tmp_path / "repo"
    (repo / "artifacts/eval").mkdir(parents=True)
    merge_lineage = {**out["lineage"], "kind": "merge", "inputs": [{"model": MODEL, "step": 2}], "mixture": {"code": 3.0}}
    for model_id, lineage in ((MODEL, out["lineage"]), ("merge-x", merge_lineage)):
        (repo / paths.eval_file(model_id)).write_text(json.dumps({**out, "model": model_id, "lineage": lineage}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"metrics": dvc_engine.document(in_study)["metrics"]}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    for cmd in (["git", "init", "-q"], dvc + ["init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    shown = json.loads(subprocess.run(dvc + ["metrics", "show", "--json"], cwd=repo, check=True, env=env,
                                      capture_output=True, text=True).stdout)
    (files,) = (rev["data"] for rev in shown.values())  # the workspace (keyed "" before the first commit)
    assert set(files) == {paths.eval_file(MODEL), paths.eval_file("merge-x")}
    assert all("error" not in f for f in files.values())
    data = files[paths.eval_file(MODEL)]["data"]
    assert data["heldout"]["all"]["loss"] == out["heldout"]["all"]["loss"]
    assert data["tasks"]["arbor_cloze"]["acc"] == out["tasks"]["arbor_cloze"]["acc"]
