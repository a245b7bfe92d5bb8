"""Byte-level BPE (GPT-2 style) encoding through a per-process word cache, exactly as `tokenizers` encodes.

A byte-level BPE tokenizer splits text with the GPT-2 pre-tokenizer regex, maps each piece's UTF-8 bytes
to printable characters and runs BPE merges on each piece alone: a piece's ids depend on the piece only.
Text is Zipfian, so after a few thousand documents almost every piece is a cache hit and a document costs
one `regex.findall` plus one dict lookup per piece, ~2-4x less CPU than `Tokenizer.encode_batch_fast`
(which also builds token strings and an `Encoding` per document; measured in bench/tokenize.py). Misses go
through the tokenizer's own `model.tokenize`, so the merges are never reimplemented here.

Exactness is checked, not assumed:
- `unsupported(tok)` accepts a tokenizer only when its pipeline is exactly this one (no normalizer,
  `ByteLevel` pre-tokenizer with the GPT-2 regex and no prefix space, BPE without dropout/affixes/byte
  fallback, every added token special: they are encoded as text, see `workflow.tokenize.prepare`);
  otherwise callers use `encode_batch_fast`;
- the split depends on three character classes (letter, number, whitespace), and `regex`'s Unicode
  tables differ from those of the Oniguruma inside `tokenizers` for recently assigned characters
  (measured, regex 2026.11 vs tokenizers 0.23: 19 BMP code points by class, and 336 above it in a context sweep). `disagreeing_chars`
  asks the tokenizer's own pre-tokenizer how it classes every BMP code point (~0.5 s) and a document
  holding any disagreeing or non-BMP character is encoded by the tokenizer itself.

Memory: at most `MAX_WORDS` cached pieces of at most `MAX_PIECE_CHARS` characters: measured 63 MB for
200,000 random 3-12 letter words, so ~32 MB per process at 100,000.
"""

from __future__ import annotations

import json

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_WORDS = 100_000
MAX_PIECE_CHARS = 64


def _byte_table() -> dict[int, str]:
    """GPT-2's byte -> printable character map, as a `str.translate` table over latin-1 characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def unsupported(tok) -> str | None:
    """Why `tok` is not a plain byte-level BPE this module reproduces exactly, or None."""
    cfg = json.loads(tok.to_str())
    pre, model = cfg.get("pre_tokenizer") or {}, cfg.get("model") or {}
    checks = {
        "has a normalizer": cfg.get("normalizer") is not None,
        "pre-tokenizer is not ByteLevel(use_regex=True, add_prefix_space=False)":
            (pre.get("type"), pre.get("use_regex"), pre.get("add_prefix_space")) != ("ByteLevel", True, False),
        "model is not BPE": model.get("type") != "BPE",
        "BPE has dropout, affixes or byte fallback": bool(model.get("dropout") or model.get("continuing_subword_prefix")
                                                          or model.get("end_of_word_suffix") or model.get("byte_fallback")),
        "has non-special added tokens": any(not t.get("special") for t in cfg.get("added_tokens") or []),
    }
    return next((why for why, failed in checks.items() if failed), None)


def disagreeing_chars(tok) -> str:
    """The BMP code points that `regex` and `tok`'s pre-tokenizer put in different GPT-2 split classes."""
    import regex

    split = tok.pre_tokenizer.pre_tokenize_str
    letter, number, space = (regex.compile(p).fullmatch for p in (r"\p{L}", r"\p{N}", r"\s"))
    bad = []
    for c in map(chr, range(0x10000)):
        if 0xD800 <= ord(c) <= 0xDFFF:
            continue
        is_letter = len(split("a" + c)) == 1                 # letters extend a letter run
        is_number = len(split("1" + c)) == 1                 # numbers extend a number run
        is_space = not (is_letter or is_number or len(split("!" + c + "!")) == 1)  # the rest joins punctuation
        if (is_letter, is_number, is_space) != (bool(letter(c)), bool(number(c)), bool(space(c))):
            bad.append(c)
    return "".join(bad)


class WordCache:
    """`encode(text)` -> ids, identical to `tok.encode(text, add_special_tokens=False).ids` (special tokens as text).

    `disagreeing`: `disagreeing_chars(tok)`, computed once and passed to each worker process.
    """

    def __init__(self, tok, disagreeing: str):
        import regex

        self.tok = tok
        self.split = regex.compile(GPT2_SPLIT).findall
        self.unsafe = regex.compile("[" + regex.escape(disagreeing) + "\U00010000-\U0010FFFF]").search
        self.table = _byte_table()
        self.cache: dict[str, list[int]] = {}

    def _mapped(self, piece: str) -> str:
        return piece.encode("utf-8").decode("latin-1").translate(self.table)

    def encode(self, text: str) -> list[int]:
        if self.unsafe(text):
            return self.tok.encode(text, add_special_tokens=False).ids
        cache, out = self.cache, []
        for piece in self.split(text):
            ids = cache.get(piece)
            if ids is None:
                ids = [t.id for t in self.tok.model.tokenize(self._mapped(piece))]
                if len(cache) < MAX_WORDS and len(piece) <= MAX_PIECE_CHARS:
                    cache[piece] = ids
            out += ids
        return out
