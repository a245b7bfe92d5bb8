"""A regex word splitter standing in for spaCy behind datatrove's Gopher, C4 and FineWeb filters.

datatrove splits words with `spacy.blank("en")` (about 8 ms per document, the cost of curation).
`FastWordTokenizer` implements datatrove's `WordTokenizer` interface with one compiled regex that
follows spaCy's English rules where they move the filters' statistics: punctuation split off
words, clitics (`'s`, `n't`, `can|not`), initials and abbreviations (`I.`, `i.e.`), numbers
(`3.14`), dotted names, e-mails and URLs kept whole. Sentences follow spaCy's `Sentencizer`: a
sentence ends after a token in its punctuation set, before the next non-punctuation token.
Passed as `language=` to the datatrove filters, whose logic is used unchanged; bench/curate.py
measures how often it changes a keep/drop decision (the issue's bar: <= 1% of documents).
"""

from __future__ import annotations

import unicodedata

import regex
from datatrove.utils.word_tokenizers import WordTokenizer

TOKEN = regex.compile(r"""
      https?://\S+
    | '(?i:s|re|ve|ll|d|m)\b
    | (?i:can)(?=not\b)
    | \w+(?=n't\b) | n't\b
    | \b[A-Za-z]\.(?:[A-Za-z]\.)*(?!\w)
    | \d+(?:[.,:]\d+)+
    | \w+(?:[.@/]\w+)+
    | \w+
    | \.\.+ | -{2,}
    | [^\w\s]
""", regex.X)

# spaCy's Sentencizer.default_punct_chars (spacy/pipeline/sentencizer.pyx), copied to avoid importing spaCy.
SENT_PUNCT = frozenset(
    ['!', '.', '?', '։', '؟', '۔', '܀', '܁', '܂', '߹', '।', '॥', '၊', '။', '።', '፧', '፨', '᙮', '᜵', '᜶', '᠃', '᠉',
     '᥄', '᥅', '᪨', '᪩', '᪪', '᪫', '᭚', '᭛', '᭞', '᭟', '᰻', '᰼', '᱾', '᱿', '‼', '‽', '⁇', '⁈', '⁉', '⸮', '⸼',
     '꓿', '꘎', '꘏', '꛳', '꛷', '꡶', '꡷', '꣎', '꣏', '꤯', '꧈', '꧉', '꩝', '꩞', '꩟', '꫰', '꫱', '꯫', '﹒', '﹖',
     '﹗', '！', '．', '？', '𐩖', '𐩗', '𑁇', '𑁈', '𑂾', '𑂿', '𑃀', '𑃁', '𑅁', '𑅂', '𑅃', '𑇅', '𑇆', '𑇍', '𑇞',
     '𑇟', '𑈸', '𑈹', '𑈻', '𑈼', '𑊩', '𑑋', '𑑌', '𑗂', '𑗃', '𑗉', '𑗊', '𑗋', '𑗌', '𑗍', '𑗎', '𑗏', '𑗐', '𑗑',
     '𑗒', '𑗓', '𑗔', '𑗕', '𑗖', '𑗗', '𑙁', '𑙂', '𑜼', '𑜽', '𑜾', '𑩂', '𑩃', '𑪛', '𑪜', '𑱁', '𑱂', '𖩮', '𖩯',
     '𖫵', '𖬷', '𖬸', '𖭄', '𛲟', '𝪈', '｡', '。'])


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


class FastWordTokenizer(WordTokenizer):
    """datatrove `WordTokenizer` with spaCy-like English splitting at regex speed."""

    def __init__(self, language: str = "en"):
        super().__init__(language)

    def word_tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        start = end = None
        seen_period = False
        for m in TOKEN.finditer(text):
            tok = m.group()
            in_punct = tok in SENT_PUNCT
            if start is None:
                start = m.start()
            elif seen_period and not in_punct and not _is_punct(tok):
                spans.append((start, end))
                start, seen_period = m.start(), False
            if in_punct:
                seen_period = True
            end = m.end()
        if start is not None:
            spans.append((start, end))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b].strip() for a, b in self.span_tokenize(text) if text[a:b].strip()]

    def __reduce__(self):  # picklable for datatrove's executors
        return (FastWordTokenizer, (self.language,))
