"""Each curation step on crafted documents: one kept and one dropped case, with datatrove's reason."""

from __future__ import annotations

import pytest
from datatrove.data import Document

from workflow.curate.blocks import Pipeline, build_steps
from workflow.curate.words import FastWordTokenizer
from workflow.params import Curation, parse_params

OFF = {"ftfy": False, "language": None, "gopher_repetition": None, "gopher_quality": None, "c4": None,
       "fineweb": None, "pii": None}

PROSE = ("The committee met on Tuesday to review the budget for the coming year. Members agreed that the "
         "library should have longer opening hours, and that the park needs new benches. After a long "
         "discussion, they voted to fund both projects with the money saved from the road repairs. The "
         "chair thanked everyone for coming and closed the meeting at nine in the evening.\n"
         "Residents who want to comment can write to the council office before the end of the month. "
         "All letters will be read aloud at the next meeting, which is open to the public.")


def run_step(step: str, text: str, tokenizer: str = "fast", **settings):
    steps = {**OFF, step: settings if step != "ftfy" else True}
    cfg = Curation(min_chars=1, steps=steps, word_tokenizer=tokenizer)
    doc = Document(text=text, id="x", metadata={"meta": {}})
    return Pipeline(build_steps(cfg, cfg.steps))(doc), doc.text


@pytest.mark.parametrize("tokenizer", ["fast", "spacy"])
def test_prose_passes_every_fineweb_filter(tokenizer):
    cfg = Curation(min_chars=1, word_tokenizer=tokenizer, steps={"ftfy": True})
    assert Pipeline(build_steps(cfg, cfg.steps))(Document(text=PROSE, id="x", metadata={"meta": {}})) is None


@pytest.mark.parametrize("step, text, reason", [
    ("language", "Le comité s'est réuni mardi pour examiner le budget de l'année prochaine et voter.", "language"),
    ("gopher_repetition", "buy now\n" * 30, "dup_line_frac"),
    ("gopher_quality", "Too short to be a real document.", "gopher_short_doc"),
    ("c4", PROSE.replace("benches.", "benches {sic}."), "curly_bracket"),
    ("c4", PROSE + "\nLorem ipsum dolor sit amet, consectetur.", "lorem_ipsum"),
    ("fineweb", "\n".join(f"item number {i} without any punctuation at the end of it" for i in range(20)), "line_punct_ratio"),
])
def test_filter_drops_with_reason(step, text, reason):
    assert run_step(step, text)[0] == (step, reason)
    assert run_step(step, PROSE)[0] is None


def test_formatters_rewrite_text():
    verdict, text = run_step("pii", "Write to jane.doe@gmail.com or ping 8.8.8.8 today.")
    assert verdict is None and "jane.doe" not in text and "8.8.8.8" not in text
    assert run_step("ftfy", "The cafÃ© is open.")[1] == "The café is open."
    cfg = Curation(min_chars=1, normalize="NFC", steps=OFF)
    doc = Document(text="Cafe\u0301\r\nbar", id="x", metadata={"meta": {}})
    Pipeline(build_steps(cfg, cfg.steps))(doc)
    assert doc.text == "Caf\u00e9\nbar"


def test_language_metadata_is_recorded():
    cfg = Curation(min_chars=1, steps={**OFF, "language": {}})
    doc = Document(text=PROSE, id="x", metadata={"meta": {}})
    assert Pipeline(build_steps(cfg, cfg.steps))(doc) is None
    assert doc.metadata["language"] == "en" and doc.metadata["language_score"] > 0.65


def test_source_overrides_replace_single_steps():
    params = parse_params({
        "sources": {"code": {"paths": ["x"], "domain": "code", "steps": {"gopher_quality": None, "c4": {"filter_curly_bracket": False}}},
                    "web": {"paths": ["y"], "domain": "web"}},
        "trunk": {"checkpoints": [1]},
    })
    code = params.sources["code"].curation_steps(params.curation)
    assert code.gopher_quality is None and code.c4.filter_curly_bracket is False
    assert code.language == params.curation.steps.language and code.fineweb is not None
    assert params.sources["web"].curation_steps(params.curation) == params.curation.steps


def test_fast_tokenizer_matches_spacy_on_plain_english():
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    spacy_tok = load_word_tokenizer("en")
    text = "Don't panic: the U.S. team's 3.5 km run (in the rain) can't start before 9 a.m., can it?"
    assert FastWordTokenizer().word_tokenize(text) == spacy_tok.word_tokenize(text)
    assert len(FastWordTokenizer().sent_tokenize(PROSE)) == len(spacy_tok.sent_tokenize(PROSE))
