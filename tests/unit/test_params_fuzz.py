"""Property test: any broken study file ends in exit 2 with a message naming the key — no traceback, nothing written."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_PARAMS
from workflow import cli

BASE = yaml.safe_load(TINY_PARAMS.read_text())
BAD_NAMES = ["a/b", "../up", "x;rm -rf", "$(id)", "sp ace", "Upper", "-lead", "back`tick", "", "é"]


SIZES = [("model", "num_layers"), ("model", "hidden_size"), ("model", "num_attention_heads"), ("model", "seq_length"),
         ("trunk", "global_batch_size"), ("trunk", "micro_batch_size"), ("trunk", "save_interval"), ("trunk", "checkpoints"),
         ("decays", "short", "steps"), ("tokenizer", "vocab_size"),
         ("tokenizer", "sample_bytes"), ("eval", "batch_size"), ("curation", "shard_docs")]


def wrong_values(value) -> list:
    """Values of another type that pydantic cannot coerce into the type of `value`."""
    if isinstance(value, str):
        return [{"a": 1}, [1, 2]]
    if isinstance(value, list):
        return [{"a": 1}, "not-a-list"]
    return [{"a": 1}, [1, 2], "not-a-number"]  # numbers and booleans


def leaves(node, prefix=()):
    """(path, value) of every scalar or list leaf of a mapping."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def get(node, path):
    for p in path:
        node = node[p]
    return node


def mutations(draw) -> tuple[dict, str]:
    """One broken copy of the tiny study and the dotted key its error must name."""
    study = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["type", "unknown", "missing", "size", "name", "cycle", "from_step", "merge_input"]))
    if kind == "type":
        path, value = draw(st.sampled_from([(p, v) for p, v in leaves(study) if v is not None and v != {}]))
        get(study, path[:-1])[path[-1]] = draw(st.sampled_from(wrong_values(value)))
        return study, ".".join(path)
    if kind == "unknown":
        mappings = [()] + [p for p, _ in _mappings(study)]
        path = draw(st.sampled_from(mappings))
        get(study, path)["zz_typo"] = 1
        return study, ".".join(path + ("zz_typo",))
    if kind == "missing":  # (path removed, key the message names)
        path, key = draw(st.sampled_from([
            (("trunk",), "trunk"), (("sources",), "sources"), (("trunk", "checkpoints"), "trunk.checkpoints"),
            (("sources", "prose", "paths"), "sources.prose.paths"), (("sources", "code", "domain"), "sources.code.domain"),
            (("decays", "short", "from"), "decays.short.from"), (("decays", "late", "steps"), "decays.late"),
            (("merges", "both", "models"), "merges.both")]))
        del get(study, path[:-1])[path[-1]]
        return study, key
    if kind == "size":
        path = draw(st.sampled_from(SIZES))
        bad = draw(st.sampled_from([0, -1, -4096]))
        get(study, path[:-1])[path[-1]] = [bad, 24] if path[-1] == "checkpoints" else bad
        return study, ".".join(path)
    if kind == "name":
        section = draw(st.sampled_from(["sources", "decays", "merges"]))
        name = draw(st.sampled_from(BAD_NAMES))
        first = next(iter(study[section]))
        study[section][name] = study[section].pop(first)
        return study, f"{section}.{name}" if name else section
    if kind == "cycle":
        study["merges"]["a"] = {"models": ["merge-b"]}
        study["merges"]["b"] = {"models": ["merge-a"]}
        return study, "merges.a.models"
    if kind == "from_step":
        study["decays"]["short"]["from"] = draw(st.sampled_from(["main@1", "main@13", "main@999", "nope@12", "decay-gone", "junk"]))
        return study, "decays.short.from"
    study["merges"]["both"]["models"] = ["decay-short", draw(st.sampled_from(["decay-gone", "main@7", "merge-nope", "junk"]))]
    return study, "merges.both.models.1"


def _mappings(node, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield prefix + (key,), value
            yield from _mappings(value, prefix + (key,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([["check"], ["curate", "--source", "prose"], ["trunk", "--step", "12"], ["report"]]))
def test_broken_study_exits_2_naming_the_key(data, argv):
    study, key = mutations(data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        err = io.StringIO()
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_:
                cli.main(["--params", str(path), *argv])
        finally:
            os.chdir(cwd)
        message = err.getvalue()
        assert exit_.value.code == 2, message
        assert key in message, (key, message)
        assert "Traceback" not in message and message.startswith("error: ")
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["params.yaml"]
