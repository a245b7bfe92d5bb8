"""The read recorder (workflow/reads.py): what a stage reads through it is noted, and nothing else changes."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_PARAMS
from workflow.params import load_params
from workflow.reads import Reads, recording


@pytest.fixture
def seen():
    reads = Reads()
    return recording(load_params(TINY_PARAMS), reads), reads


def test_values_and_properties(seen):
    params, reads = seen
    assert params.decay_steps("rewarm") == 6  # fraction 0.5 of step 12: a method reads through the view
    assert params.decays["rewarm"].peak_lr(params.at("main").trunk) == 0.002
    assert reads.keys == {"decays.rewarm.steps", "decays.rewarm.fraction", "decays.rewarm.parent",
                          "decays.rewarm.rewarm.peak_lr"}
    assert reads.present == {"decays.rewarm.rewarm"}  # `if self.rewarm`: whether the section is set
    assert reads.collections == set()


def test_a_scoped_study_reads_under_its_trunk(seen):
    params, reads = seen
    cos = params.at("cos")
    assert (cos.trunk.schedule, cos.model.hidden_size) == ("cosine", 64)
    assert reads.keys == {"trunks.cos.schedule", "trunks.cos.model.hidden_size"}


def test_methods_collections_and_leaves(seen):
    params, reads = seen
    assert params.merge_inputs("lawa") == ["main@12", "main@24"]
    assert reads.keys == {"merges.lawa.models", "merges.lawa.trunk_last_k", "merges.lawa.trunk", "trunks.main.checkpoints"}
    assert params.domains() == ["prose", "code"]
    assert "sources" in reads.collections and {"sources.prose.domain", "sources.code.domain"} <= reads.keys
    assert params.decays["rewarm"].mixture == {"prose": 1.0, "code": 2.0}  # a mapping of values is one leaf
    assert "decays.rewarm.mixture" in reads.keys


def test_model_dump_reads_what_it_dumps(seen):
    params, reads = seen
    dumped = params.trunk.model_dump(mode="json", exclude={"checkpoints", "save_interval"})
    assert dumped == load_params(TINY_PARAMS).trunk.model_dump(mode="json", exclude={"checkpoints", "save_interval"})
    assert "trunk.lr" in reads.keys and "trunk.checkpoints" not in reads.keys and "trunk.save_interval" not in reads.keys


def test_the_view_is_read_only(seen):
    params, _ = seen
    with pytest.raises(TypeError):
        params.trunk.lr = 1.0
