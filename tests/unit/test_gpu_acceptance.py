"""bench/gpu_acceptance.py: on a machine without CUDA it says why it cannot run and exits 0; the studies it will
run on a GPU are valid and FP8-shaped (so `check` will not refuse them there)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench import gpu_acceptance
from tests.conftest import ROOT
from workflow.params import parse_params
from workflow.train.backend import fp8_shape_problems


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run for real")
def test_says_why_it_cannot_run_and_exits_0(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "bench/gpu_acceptance.py", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "gpu_acceptance: not run: no CUDA device is visible (a CPU-only machine); nothing to accept here"
    assert json.loads(out.read_text()) == {"script": "gpu_acceptance", "rows": [],
                                           "skipped": "no CUDA device is visible (a CPU-only machine); nothing to accept here"}


@pytest.mark.parametrize("tp", [1, 2])
def test_its_studies_are_valid_and_fp8_shaped(tp):
    for fp8 in (None, "tensorwise", "delayed"):
        params = parse_params(gpu_acceptance.study("gpu", fp8, tp))
        assert fp8_shape_problems(params.model) == []
        assert params.model.parallel.tp == tp and (params.model.fp8 is None) == (fp8 is None)
        ratio = {b: d.final_lr_ratio for b, d in params.decays.items()}
        assert ratio == {"short": 0.1, "late": 0.1} and params.decays["late"].peak_lr(params.trunk) == gpu_acceptance.REWARM_PEAK
