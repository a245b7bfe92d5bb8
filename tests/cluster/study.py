"""The smallest study that still shows the DAG's shape, for the SLURM and DVC reproduction tests."""

from __future__ import annotations

import yaml

from tests.conftest import TINY_PARAMS


def micro_params() -> dict:
    """The tiny study cut to one source, no quality filtering and a two-segment trunk: the fewest jobs that still
    show the DAG's shape."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["sources"] = {"prose": params["sources"]["prose"]}
    params.pop("quality")  # its classifier learns prose from code
    params["trunk"].update(checkpoints=[4, 8], warmup_steps=2, save_interval=4)
    params["decays"], params["merges"] = {}, {}
    params.pop("trunks", None)  # one trunk, main
    params["eval"]["tasks"] = []  # held-out loss/bpb only: lm-eval tasks cost ~4x the evaluation on this scale
    return params
