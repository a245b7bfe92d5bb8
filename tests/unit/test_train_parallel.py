"""Parallel layouts on CPU (gloo): the stage launches torchrun itself; TP=2, DP=2, PP=2 and TP=2 x PP=2 give one
process's losses and grad norms (to 1e-5), and a checkpoint saved under one layout loads, and trains on, under
another (megatron's dist_checkpointing reshards model and optimizer state). Across two SLURM nodes:
tests/cluster/test_slurm.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.conftest import train_params_dict
from workflow import stages
from workflow import paths
from workflow.params import parse_params
from workflow.train import checkpoint as ckpt


def run_stage(raw: dict, *argv: str) -> None:
    """`python -m workflow <argv>` on `raw` written to ./params.yaml, in a fresh interpreter."""
    with open("params.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    done = subprocess.run([sys.executable, "-m", "workflow", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    layout = raw["model"]["parallel"]
    assert f"launching {layout['nproc_per_node'] * layout.get('nodes', 1)} processes" in done.stderr


def study(**trunk_keys) -> dict:
    """The tiny study with two layers (one per pipeline stage at PP=2)."""
    raw = train_params_dict(**trunk_keys)
    raw["model"]["num_layers"] = 2
    return raw


def curves(directory) -> tuple[list[float], list[float]]:
    log = ckpt.read_log(directory)
    return [row["loss"] for row in log], [row["grad_norm"] for row in log]


def assert_same_run(directory, reference) -> None:
    losses, norms = curves(directory)
    assert losses == pytest.approx(reference[0], abs=1e-5)
    assert norms == pytest.approx(reference[1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [{"tp": 2, "nproc_per_node": 2}, {"nproc_per_node": 2}, {"pp": 2, "nproc_per_node": 2},
                                    {"tp": 2, "pp": 2, "nproc_per_node": 4}],
                         ids=["tp2", "dp2", "pp2", "tp2pp2"])
def test_parallel_layout_matches_one_process(train_study, train_weights, layout):
    one = parse_params(study(checkpoints=[4, 8]))
    stages.call(one, "trunk")
    reference = {s: (curves(paths.trunk_dir("main", s)), train_weights(paths.trunk_dir("main", s), one)) for s in (4, 8)}
    shutil.rmtree(paths.trunk_root("main"))

    raw = study(checkpoints=[4, 8])
    raw["model"]["parallel"] = layout
    run_stage(raw, "trunk", "--step", "4")
    shards = list((Path(paths.trunk_dir("main", 4)) / ckpt.CKPT).glob("__*.distcp"))
    assert len(shards) == layout.get("tp", 1) * layout.get("pp", 1)  # data-parallel replicas are written once
    assert_same_run(paths.trunk_dir("main", 4), reference[4][0])
    # the 2-process checkpoint loads into a one-process model (resharded)...
    for name, weight in train_weights(paths.trunk_dir("main", 4), one).items():
        assert weight.allclose(reference[4][1][name], atol=1e-5), name
    # ... and training continues from it in one process, optimizer state included
    assert ckpt.read_meta(paths.trunk_dir("main", 4))["fingerprint"] == ckpt.fingerprint(one)  # layout is not in it
    stages.call(one, "trunk", trunk="main", step=8)
    assert_same_run(paths.trunk_dir("main", 8), reference[8][0])


@pytest.mark.slow
def test_pipeline_decay_continues_a_one_process_trunk(train_study, train_weights):
    """A PP=1 trunk checkpoint (weights, AdamW moments, RNG, data position) continues at PP=2 in a decay branch."""
    raw = study(checkpoints=[4])
    one = parse_params(raw)
    stages.call(one, "trunk", trunk="main", step=4)
    stages.call(one, "decay", branch="lin")
    reference = curves(paths.decay_dir("lin")), train_weights(paths.decay_dir("lin"), one)
    meta = ckpt.read_meta(paths.decay_dir("lin"))
    shutil.rmtree(paths.decay_dir("lin"))

    raw["model"]["parallel"] = {"pp": 2, "nproc_per_node": 2}
    run_stage(raw, "decay", "--branch", "lin")
    assert_same_run(paths.decay_dir("lin"), reference[0])
    for name, weight in train_weights(paths.decay_dir("lin"), one).items():
        assert weight.allclose(reference[1][name], atol=1e-5), name
    pp_meta = ckpt.read_meta(paths.decay_dir("lin"))
    same = ("model_id", "step", "consumed_samples", "tokens_seen", "lr", "fingerprint", "lineage", "data")
    assert {k: pp_meta[k] for k in same} == {k: meta[k] for k in same}
