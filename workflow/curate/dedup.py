"""Exact and MinHash near-duplicate detection, and the content-hash held-out split.

Exact: a 16-byte BLAKE2b digest of the normalised text; the first occurrence (shard order, then
line order) is kept. Near: MinHash over word n-gram shingles of the lower-cased text, LSH with
`buckets` bands of `hashes_per_bucket` hashes (FineWeb: 5-grams, 14 x 8); documents sharing a
band are connected and each connected cluster keeps its first document. The global stage works
one band at a time over memory-mapped signature arrays (8 bytes per document per band).
"""

from __future__ import annotations

import hashlib

import numpy as np
import regex
import xxhash

from workflow.params import NearDedup

WORD = regex.compile(r"\w+")
_P = (1 << 61) - 1  # Mersenne prime; (a*h + b) mod P with h, a, b < 2**32 never overflows uint64
_MASK = np.uint64(0xFFFFFFFF)


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def is_heldout(digest: bytes, fraction: float) -> bool:
    """Deterministic split by content: exact duplicates always land on the same side."""
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def first_occurrences(digests: np.ndarray, seen: set[bytes] = frozenset()) -> np.ndarray:
    """Boolean mask over (N, 16) uint8 digests: True where a digest appears for the first time
    and is not in `seen` (digests kept by earlier sources)."""
    n = len(digests)
    if n == 0:
        return np.zeros(0, dtype=bool)
    keys = np.ascontiguousarray(digests).view(np.dtype((np.void, 16))).ravel()
    _, first = np.unique(keys, return_index=True)
    mask = np.zeros(n, dtype=bool)
    mask[first] = True
    if seen:
        mask &= np.fromiter((bytes(k) not in seen for k in keys), dtype=bool, count=n)
    return mask


class MinHasher:
    def __init__(self, cfg: NearDedup):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        n = cfg.buckets * cfg.hashes_per_bucket
        self.a = rng.integers(1, 1 << 32, size=n, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=n, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        """uint32[buckets * hashes_per_bucket]; texts with fewer words than `ngram` are one shingle."""
        words = WORD.findall(text.lower())
        n = self.cfg.ngram
        shingles = {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}
        h = np.fromiter((xxhash.xxh32_intdigest(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
        sig = np.full(len(self.a), 0xFFFFFFFF, dtype=np.uint64)
        for i in range(0, len(h), 4096):  # bounded temporaries for very long documents
            phv = (h[i:i + 4096, None] * self.a + self.b) % np.uint64(_P) & _MASK
            np.minimum(sig, phv.min(axis=0), out=sig)
        return sig.astype(np.uint32)


def near_duplicates(signatures: list[np.ndarray], cfg: NearDedup, keep: np.ndarray) -> np.ndarray:
    """Boolean mask of near duplicates among rows with `keep` True: every member of an LSH-connected
    cluster except its first row. `signatures` are the shards' arrays (memory maps), in order; they
    are read one band at a time."""
    n = len(keep)
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    rows = np.flatnonzero(keep)
    r = cfg.hashes_per_bucket
    for band in range(cfg.buckets):
        if len(rows) < 2:
            break
        band_sigs = np.concatenate([np.asarray(s[:, band * r:(band + 1) * r]) for s in signatures])[rows]
        keys = np.ascontiguousarray(band_sigs).view(np.dtype((np.void, 4 * r))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        for j in same:  # consecutive equal keys: union their rows (smaller root wins)
            x, y = find(rows[order[j]]), find(rows[order[j + 1]])
            if x != y:
                parent[max(x, y)] = min(x, y)
    roots = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    return keep & (roots != np.arange(n))
