"""Rebuild the embedded sample corpus from installed Debian packages.

    apt-get install -y bible-kjv jargon-text python3.11-doc   # libpython3.11-stdlib is already there
    python data/sample/build.py

Writes one zstd-compressed JSON-lines file per source under `data/sample/<domain>/`; every
line is `{"id", "text", "meta"}`. Subsampling keeps a document when the SHA-256 of its id
falls under the source's fraction, so the output is byte-identical on every run as long as
the package versions are the same (see SOURCES.md). Needs only the stdlib and `zstandard`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

OUT = Path(__file__).resolve().parent
LEVEL = 19
MAX_CODE_BYTES = 200_000
STDLIB = "/usr/lib/python3.11/"
STDLIB_PKGS = ("libpython3.11-minimal", "libpython3.11-stdlib")
DOCS_PKG = "python3.11-doc"
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

Doc = dict


def pkg_version(pkg: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], check=True, capture_output=True, text=True).stdout


def pkg_files(*pkgs: str) -> list[Path]:
    """Regular files installed by `pkgs`, sorted by path."""
    out = subprocess.run(["dpkg-query", "-L", *pkgs], check=True, capture_output=True, text=True).stdout
    return sorted({Path(p) for p in out.splitlines() if p.strip() and os.path.isfile(p) and not os.path.islink(p)})


def clean(text: str) -> str:
    """Normalise line endings and drop surrounding blank lines."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "x"


def keep(doc_id: str, fraction: float) -> bool:
    """Deterministic hash-based subsampling rule."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") < fraction * 2**64


def bible() -> Iterator[Doc]:
    """KJV Bible, one document per chapter ("Genesis 1" heading, numbered verses)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"LC_ALL": "C"}
    out = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], check=True, capture_output=True, env=env).stdout
    meta = {"source": "bible-kjv-text", "version": pkg_version("bible-kjv-text"), "license": "public-domain"}
    chapters: list[tuple[str, int, list[str]]] = []
    for line in out.decode("utf-8").splitlines():
        if m := re.fullmatch(r"(\S.*) (\d+)", line):
            chapters.append((m[1], int(m[2]), []))
        elif m := re.fullmatch(r"\s+(\d+) (.+)", line):
            chapters[-1][2].append(f"{m[1]} {m[2].strip()}")
        elif line.strip():
            raise ValueError(f"unexpected bible output line: {line!r}")
    for book, ch, verses in chapters:
        text = f"{book} {ch}\n\n" + "\n".join(verses)
        yield {"id": f"kjv/{slug(book)}/{ch}", "text": text, "meta": meta | {"book": book, "chapter": ch}}


def paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs; the Jargon File's 3-space body indent is removed,
    keeping deeper (quote, list) indentation, and column-0 tables and art are left as they are."""
    paras = re.split(r"\n[ \t]*\n", "\n".join(lines))
    undent = lambda p: textwrap.dedent(p) if re.search(r"(?m)^ {0,2}\S", p) else re.sub(r"(?m)^   ", "", p)
    return [undent(p).strip("\n") for p in paras if p.strip()]


def jargon() -> Iterator[Doc]:
    """Jargon File: one document per lexicon entry and per introduction/appendix section."""
    src = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
    lines = clean(gzip.decompress(src.read_bytes()).decode("utf-8")).split("\n")
    meta = {"source": "jargon-text", "version": pkg_version("jargon-text"), "license": "public-domain"}
    heading = re.compile(r"[A-Za-z].*|\s{20,}(Part\s[IVX]+\..*|Welcome to the Jargon File)")
    sections: list[tuple[str, list[str]]] = [("", [])]  # title page and table of contents: dropped
    for line in lines:
        if heading.fullmatch(line):
            sections.append((" ".join(line.split()), []))
        else:
            sections[-1][1].append(line)

    def doc(kind: str, title: str, text: str) -> Doc:
        return {"id": f"jargon/{kind}/{title}", "text": text, "meta": meta | {"section": kind, "title": title}}

    for title, body in sections:
        if not title or title.startswith("Part "):  # part pages hold only a table of contents
            continue
        if title == "Glossary":  # entries start with "   :term:"; "  A" starts a per-letter index
            entries: list[tuple[str, list[str]]] = []
            for line in body:
                if m := re.fullmatch(r"   :(.+?):.*", line):
                    entries.append((m[1], [line]))
                elif re.fullmatch(r"  [0-9A-Z]", line):
                    entries.append(("", []))
                elif entries:
                    entries[-1][1].append(line)
            for term, entry in entries:
                if term:
                    yield doc("lexicon", term, "\n\n".join(paragraphs(entry)))
            continue
        paras = paragraphs(body)
        if paras and paras[0] == "Table of Contents":  # drop it and the one-line subsection titles
            paras.pop(0)
            while paras and "\n" not in paras[0]:
                paras.pop(0)
        if paras:
            yield doc("text", title, "\n\n".join([title, *paras]))


def python_docs() -> Iterator[Doc]:
    """Python 3.11 documentation reST sources, one document per file."""
    meta = {"source": DOCS_PKG, "version": pkg_version(DOCS_PKG), "license": "PSF-2.0"}
    for path in pkg_files(DOCS_PKG):
        rel = str(path).partition("/html/_sources/")[2]
        if rel.endswith(".rst.txt"):
            text = clean(path.read_bytes().decode("utf-8"))
            yield {"id": f"python-docs/{rel[:-4]}", "text": text, "meta": meta | {"file": rel[:-4]}}


def python_stdlib() -> Iterator[Doc]:
    """Python 3.11 standard library (Debian's), one document per .py file; no tests, no generated tables."""
    version = pkg_version(STDLIB_PKGS[1])
    for path in pkg_files(*STDLIB_PKGS):
        rel = str(path).removeprefix(STDLIB)
        if (
            rel == str(path)
            or not rel.endswith(".py")
            or SKIP_DIRS & set(rel.split("/")[:-1])
            or rel.startswith("_sysconfigdata")  # build-machine configuration, not code
            or path.stat().st_size > MAX_CODE_BYTES
        ):
            continue
        text = clean(path.read_bytes().decode("utf-8"))
        if "with gencodec.py" in text[:300]:  # machine-generated charmap codec tables
            continue
        meta = {"source": "libpython3.11-stdlib", "version": version, "license": "PSF-2.0", "file": rel}
        yield {"id": f"python-stdlib/{rel}", "text": text, "meta": meta}


# domain -> [(file stem, generator, fraction of documents kept)]
SOURCES: dict[str, list[tuple[str, Callable[[], Iterator[Doc]], float]]] = {
    "prose": [("bible_kjv", bible, 0.75), ("jargon_file", jargon, 1.0)],
    "reference": [("python_docs", python_docs, 0.5)],
    "code": [("python_stdlib", python_stdlib, 0.6)],
}


def build() -> None:
    cctx = zstandard.ZstdCompressor(level=LEVEL)
    total_z = 0
    print(f"{'file':<32} {'docs':>6} {'raw bytes':>11} {'zst bytes':>10}")
    for domain, sources in SOURCES.items():
        for stem, gen, fraction in sources:
            docs = [d for d in gen() if d["text"].strip() and keep(d["id"], fraction)]
            if not docs:
                raise SystemExit(f"{stem}: no documents; are the packages installed (see the docstring)?")
            ids = [d["id"] for d in docs]
            assert len(set(ids)) == len(ids), f"duplicate ids in {stem}"
            raw = b"".join(json.dumps(d, ensure_ascii=False).encode() + b"\n" for d in docs)
            data = cctx.compress(raw)
            path = OUT / domain / f"{stem}.jsonl.zst"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            total_z += len(data)
            text_bytes = sum(len(d["text"].encode()) for d in docs)
            print(f"{domain + '/' + path.name:<32} {len(docs):>6} {text_bytes:>11,} {len(data):>10,}")
    print(f"{'total':<32} {'':>6} {'':>11} {total_z:>10,}")


if __name__ == "__main__":
    build()
