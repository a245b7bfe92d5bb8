"""Parallel layouts on CPU (gloo): the stage launches torchrun itself; TP=2 and DP=2 give TP=1's losses
(to 1e-5), and a checkpoint saved at TP=2 loads, and trains on, at TP=1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.conftest import train_params_dict
from workflow import paths
from workflow.train import checkpoint as ckpt
from workflow.train import trunk


def run_stage(raw: dict, *argv: str) -> None:
    """`python -m workflow <argv>` on `raw` written to ./params.yaml, in a fresh interpreter."""
    with open("params.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    done = subprocess.run([sys.executable, "-m", "workflow", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "launching 2 processes" in done.stderr


def losses(directory) -> list[float]:
    return [row["loss"] for row in ckpt.read_log(directory)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", [{"tp": 2, "nproc_per_node": 2}, {"nproc_per_node": 2}], ids=["tp2", "dp2"])
def test_parallel_layout_matches_one_process(train_study, train_weights, layout, tmp_path):
    one = train_study(checkpoints=[4, 8])
    trunk.run(one, None)
    reference = {s: (losses(paths.trunk_dir(s)), train_weights(paths.trunk_dir(s), one)) for s in (4, 8)}
    shutil.rmtree(paths.trunk_root())

    raw = train_params_dict(checkpoints=[4, 8])
    raw["model"]["parallel"] = layout
    run_stage(raw, "trunk", "--step", "4")
    shards = list((Path(paths.trunk_dir(4)) / ckpt.CKPT).glob("__*.distcp"))
    assert len(shards) == layout.get("tp", 1)  # one file per TP rank; data-parallel replicas are written once
    assert losses(paths.trunk_dir(4)) == pytest.approx(reference[4][0], abs=1e-5)
    # the 2-process checkpoint loads into a one-process model (resharded)...
    for name, weight in train_weights(paths.trunk_dir(4), one).items():
        assert weight.allclose(reference[4][1][name], atol=1e-5), name
    # ... and training continues from it in one process, optimizer state included
    assert ckpt.read_meta(paths.trunk_dir(4))["fingerprint"] == ckpt.fingerprint(one)  # layout is not in it
    trunk.run(one, 8)
    assert losses(paths.trunk_dir(8)) == pytest.approx(reference[8][0], abs=1e-5)
