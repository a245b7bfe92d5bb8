"""Kill safety: a trunk segment SIGKILLed at random points, then stopped by SIGTERM (what SLURM sends at a
walltime or a requeue), then rerun, ends with the weights of an uninterrupted run, bit for bit (CPU, fixed seed)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.unit.conftest import train_params_dict
from workflow import stages
from workflow import paths
from workflow.train import checkpoint as ckpt

STEPS, SAVE_INTERVAL = 40, 5
LEFTOVER = re.compile(r"\.(tmp|old)-\d+$")  # what a killed `atomic_dir` leaves behind


def start_segment() -> subprocess.Popen:
    """`python -m workflow trunk --trunk main --step 12` in its own process group (killing it kills its helpers too)."""
    return subprocess.Popen([sys.executable, "-m", "workflow", "trunk", "--step", str(STEPS)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_after_step(proc: subprocess.Popen, step: int, delay: float, sig: int = signal.SIGKILL) -> str:
    """Wait until `proc` logs optimizer step `step`, let it run `delay` s more (into the next step or the
    save), send `sig` to its process group; returns its output."""
    out = []
    for line in proc.stdout:
        out.append(line)
        if re.match(rf"main@{STEPS} step {step}/{STEPS} ", line):
            time.sleep(delay)
            if proc.poll() is not None:
                pytest.fail(f"the segment finished before it could be killed after step {step}")
            os.killpg(proc.pid, sig)
            out += proc.stdout.readlines()
            proc.wait()
            return "".join(out)
    proc.wait()
    pytest.fail(f"the segment ended (rc {proc.returncode}) before step {step}:\n{''.join(out)[-3000:]}")


def weights_and_log(directory, params, train_weights):
    log = ckpt.read_log(directory)  # byte-for-byte comparable: nothing wall-clock is saved
    return train_weights(directory, params), log


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_is_bit_identical(train_study, train_weights):
    params = train_study(checkpoints=[STEPS], save_interval=SAVE_INTERVAL)
    stages.call(params, "trunk", trunk="main", step=STEPS)
    reference, reference_log = weights_and_log(paths.trunk_dir("main", STEPS), params, train_weights)
    Path(paths.trunk_dir("main", STEPS)).rename("uninterrupted")

    with open("params.yaml", "w") as f:
        yaml.safe_dump(train_params_dict(checkpoints=[STEPS], save_interval=SAVE_INTERVAL), f)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    points = sorted(rng.sample(range(SAVE_INTERVAL + 1, STEPS - 10), 3))  # after the first resume point
    for step in points:
        kill_after_step(start_segment(), step, rng.uniform(0.0, 0.05))  # mid-step, or mid-save
        assert not Path(paths.trunk_dir("main", STEPS)).exists(), f"seed {seed}: a killed job left its output"
    saved = ckpt.read_meta(paths.scratch_dir("trunk", f"main/step-{STEPS}"))["step"]
    assert points[-1] - SAVE_INTERVAL <= saved < STEPS, f"seed {seed}: resume point {saved}, kills {points}"

    term = points[-1] + 3  # SIGTERM: the step ends, a resume point is saved there, exit 143
    proc = start_segment()
    out = kill_after_step(proc, term, 0.0, signal.SIGTERM)
    stopped = re.search(r"stopped by SIGTERM at step (\d+), saved; resume from (\d+)", out)
    assert proc.returncode == 143 and stopped, f"rc {proc.returncode}:\n{out[-3000:]}"
    saved = int(stopped[1])
    steps = [int(n) for n in re.findall(rf"^main@{STEPS} step (\d+)/", out, re.M)]
    # the step in progress when the signal lands ends and nothing after it runs; on a loaded machine this test
    # may read step `term` a few steps after the job logged it, so the stop can come later than term + 1
    assert stopped[1] == stopped[2] and term <= saved < STEPS and steps[-1] == saved, f"steps {steps}"
    assert ckpt.read_meta(paths.scratch_dir("trunk", f"main/step-{STEPS}"))["step"] == saved
    assert not Path(paths.trunk_dir("main", STEPS)).exists()

    done = subprocess.run([sys.executable, "-m", "workflow", "trunk", "--step", str(STEPS)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {paths.scratch_dir('trunk', f'main/step-{STEPS}')} (step {saved})" in done.stdout
    weights, log = weights_and_log(paths.trunk_dir("main", STEPS), params, train_weights)
    assert weights.keys() == reference.keys()
    for name in weights:
        assert torch.equal(weights[name], reference[name]), f"seed {seed}, kills after steps {points}: {name} differs"
    assert log == reference_log
    leftovers = [p for p in Path(paths.ARTIFACTS).rglob("*") if LEFTOVER.search(p.name)]
    assert not leftovers and not Path(paths.scratch_dir("trunk", f"main/step-{STEPS}")).exists()
