"""Exact and near-duplicate removal: normalized-text hash, then MinHash LSH confirmed by exact Jaccard.

Pipeline (threshold t = 0.9 by default):
1. normalize: NFKC, case-fold, whitespace runs -> one space, stripped (`normalize`).
2. exact: documents with the same normalized text (128-bit blake2b) join the first one's cluster.
3. near: MinHash (128 permutations) over character 5-grams of the normalized text, LSH with the
   bands x rows that `minhash.lsh_layout` picks for t (16 x 8 at t = 0.9: a pair at Jaccard 0.9 becomes
   a candidate with probability 0.9999). Only the first document of each exact group is bucketed.
4. confirm: a candidate pair is kept only if the exact Jaccard of the two 5-gram sets is >= t
   (sets of 64-bit shingle hashes: a false match needs a 64-bit collision).
5. cluster: union-find over exact groups and confirmed pairs; each cluster keeps its first document
   in input order (smallest id) and the others map to it.

Sharding (corpora larger than one machine). Every step before confirmation is per document, and
bucketing only needs ~152 bytes per document (16-byte exact key + 16 uint64 band keys):

    params = SketchParams.for_threshold(0.9)          # same params (engine, seed, rensa version) everywhere
    part = sketch(shard_texts, ids=shard_global_ids, params=params)   # on each worker, any order
    np.savez(f"sketch_{k}.npz", ids=part.ids, exact=part.exact, bands=part.bands)
    merged = merge_sketches([...loaded parts...])      # on one box: concatenation
    pairs = candidate_pairs(merged)                    # one sort over docs x bands keys
    pairs = confirm_pairs(pairs, texts_by_id, params.threshold)   # needs only the candidates' texts
    result = cluster(merged, pairs)

`candidate_pairs` sorts all docs x bands keys in one process (8 bytes per band per document). Past
that, shuffle instead: route each (exact key, id) by exact key to find exact groups, then each
(band key, id) row of the representatives by band key; every reducer runs `minhash.bucket_pairs` on its
rows (the band index salts each key, so bands never collide) and the candidate set is the union.
"""
from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ta_data.minhash import (
    Engine,
    band_keys,
    bucket_pairs,
    default_engine,
    lsh_layout,
    minhash_signatures_from_hashes,
    shingle_hashes,
    sorted_jaccard,
    unique_rows,
)

DEFAULT_THRESHOLD = 0.9
# Texts per sketching step: bounds transient memory to ~40 bytes per character of the chunk
# (code points, window hashes, valid mask, selected shingles), about 60 MB for 4,096 x 360 chars.
CHUNK_DOCS = 4096

# Characters that are their own NFKC form, have combining class 0 and never compose with a preceding
# character (NFKC quick check = Yes): text can be cut before any of them and normalized piecewise.
_STABLE = r"\x00-\x7f\u3001\u3002\u4e00-\u9fff"
_UNSTABLE_RUN = re.compile(f"[^{_STABLE}]+")


def _nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), normalizing only the runs of characters that may change.

    Each run is normalized together with the character before it (a combining mark composes with its
    base); the character after a run is stable, so it starts a new segment. 2-3x faster than one
    NFKC call on Chinese text, where the only changes are a few full-width punctuation marks.
    """
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return text
    out: list[str] = []
    last = 0
    for m in _UNSTABLE_RUN.finditer(text):
        start = max(m.start() - 1, last)
        out.append(text[last:start])
        out.append(unicodedata.normalize("NFKC", text[start : m.end()]))
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def normalize(text: str) -> str:
    """NFKC (full-width -> half-width, compatibility forms folded), case-fold, collapse whitespace, strip."""
    return " ".join(_nfkc(text).casefold().split())


@functools.cache
def _single_char_nfkd() -> np.ndarray:
    """(65536,) uint32: each BMP code point's NFKD when that is one character, else itself (~70 ms once)."""
    lut = np.arange(0x10000, dtype=np.uint32)
    for c in range(0x10000):
        if not 0xD800 <= c < 0xE000:
            d = unicodedata.normalize("NFKD", chr(c))
            if len(d) == 1:
                lut[c] = ord(d)
    return lut


def normalize_many(texts: Sequence[str]) -> list[str]:
    """[normalize(t) for t in texts], 2-3x faster on Chinese text.

    First every character whose NFKD is a single character (full-width forms, the ideographic space,
    CJK compatibility ideographs: 1,758 in the BMP) is replaced by it, in numpy over all texts at once.
    That never changes the NFKC result (NFKC = compose(NFKD), and NFKD of the replacement is itself),
    and it leaves most texts already NFKC, which `_nfkc`'s quick check then passes.
    """
    if not texts:
        return []
    cp = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    mapped = _single_char_nfkd()[np.minimum(cp, 0xFFFF)]
    astral = cp > 0xFFFF
    mapped[astral] = cp[astral]
    joined = mapped.tobytes().decode("utf-32-le", "surrogatepass")
    out: list[str] = []
    pos = 0
    for t in texts:
        out.append(" ".join(_nfkc(joined[pos : pos + len(t)]).casefold().split()))
        pos += len(t)
    return out


def exact_keys(normalized: Sequence[str]) -> np.ndarray:
    """(docs,) 16-byte blake2b digests of the UTF-8 normalized texts (dtype V16, sortable)."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in normalized)
    return np.frombuffer(digests, dtype="V16").copy() if normalized else np.zeros(0, dtype="V16")


@dataclass(frozen=True)
class SketchParams:
    """Everything that must match across shards for their sketches to be merged."""

    threshold: float = DEFAULT_THRESHOLD
    """Jaccard of the 5-gram sets at or above which two documents are near-duplicates."""
    num_perm: int = 128
    """MinHash permutations (signature length); 4 bytes each per document while sketching."""
    bands: int = 16
    """LSH bands; a candidate shares all `rows` values of at least one band."""
    rows: int = 8
    """Signature values per band."""
    seed: int = 1
    """Seed of the MinHash permutations."""
    engine: Engine = "numpy"
    """MinHash implementation; "rensa" and "numpy" signatures differ and must not be mixed."""

    @classmethod
    def for_threshold(
        cls, threshold: float = DEFAULT_THRESHOLD, num_perm: int = 128, seed: int = 1, engine: Engine | None = None
    ) -> SketchParams:
        """Params with the LSH layout chosen for the threshold and the fastest installed engine."""
        bands, rows = lsh_layout(threshold, num_perm)
        return cls(threshold, num_perm, bands, rows, seed, engine or default_engine())


@dataclass
class Sketch:
    """Per-document keys of one shard (or of merged shards): all bucketing needs, no text."""

    params: SketchParams
    ids: np.ndarray
    """(docs,) int64 global document ids."""
    exact: np.ndarray
    """(docs,) V16 digests of the normalized texts."""
    bands: np.ndarray
    """(docs, params.bands) uint64 LSH band keys."""


def minhash_signatures(texts: Sequence[str], params: SketchParams | None = None) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures of the 5-gram sets of the normalized texts."""
    params = params or SketchParams.for_threshold()
    hashes, offsets = shingle_hashes(normalize_many(texts))
    return minhash_signatures_from_hashes(hashes, offsets, params.num_perm, params.seed, params.engine)


def sketch(
    texts: Sequence[str], ids: Sequence[int] | np.ndarray | None = None, params: SketchParams | None = None
) -> Sketch:
    """Exact keys and LSH band keys of texts, CHUNK_DOCS at a time; ids default to 0..len(texts)-1."""
    params = params or SketchParams.for_threshold()
    ids_arr = np.arange(len(texts), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids_arr.shape != (len(texts),):
        raise ValueError(f"need one id per text: {ids_arr.shape[0]} ids for {len(texts)} texts")
    exact = np.zeros(len(texts), dtype="V16")
    bands = np.zeros((len(texts), params.bands), dtype=np.uint64)
    for lo in range(0, len(texts), CHUNK_DOCS):
        normalized = normalize_many(texts[lo : lo + CHUNK_DOCS])
        hashes, offsets = shingle_hashes(normalized)
        sig = minhash_signatures_from_hashes(hashes, offsets, params.num_perm, params.seed, params.engine)
        exact[lo : lo + len(normalized)] = exact_keys(normalized)
        bands[lo : lo + len(normalized)] = band_keys(sig, params.bands, params.rows)
    return Sketch(params, ids_arr, exact, bands)


def merge_sketches(parts: Sequence[Sketch]) -> Sketch:
    """Concatenate shard sketches; refuses parts made with different params."""
    if not parts:
        raise ValueError("nothing to merge")
    params = parts[0].params
    for p in parts[1:]:
        if p.params != params:
            raise ValueError(f"sketch params differ: {p.params} vs {params}")
    return Sketch(
        params,
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.exact for p in parts]),
        np.concatenate([p.bands for p in parts]),
    )


def exact_representatives(sk: Sketch) -> np.ndarray:
    """(docs,) int64: for each document, the smallest id with the same normalized text (itself if first)."""
    if sk.ids.size == 0:
        return sk.ids.copy()
    halves = np.ascontiguousarray(sk.exact).view(np.uint64).reshape(-1, 2)
    order = np.lexsort((sk.ids, halves[:, 1], halves[:, 0]))
    key = sk.exact[order]
    new_group = np.concatenate(([True], key[1:] != key[:-1]))
    group_first = sk.ids[order][np.flatnonzero(new_group)]
    reps = np.empty_like(sk.ids)
    reps[order] = group_first[np.cumsum(new_group) - 1]
    return reps


def candidate_pairs(sk: Sketch) -> np.ndarray:
    """(m, 2) int64 id pairs, i < j, sharing an LSH band; only exact-group representatives take part."""
    first = exact_representatives(sk) == sk.ids
    return bucket_pairs(sk.bands[first], sk.ids[first])


def confirm_pairs(
    pairs: np.ndarray, texts: Sequence[str] | Mapping[int, str], threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """The pairs whose 5-gram sets (of normalized texts) have exact Jaccard >= threshold.

    texts maps id -> raw text; only ids that appear in pairs are read.
    """
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64)
    involved = np.unique(pairs)
    sets: list[np.ndarray] = []  # 8 bytes per distinct shingle of each involved document
    for lo in range(0, involved.size, CHUNK_DOCS):
        chunk = normalize_many([texts[i] for i in involved[lo : lo + CHUNK_DOCS].tolist()])
        sets += unique_rows(*shingle_hashes(chunk))
    rows = np.searchsorted(involved, pairs).tolist()
    keep = [sorted_jaccard(sets[i], sets[j]) >= threshold for i, j in rows]
    return pairs[np.asarray(keep, dtype=bool)]


@dataclass
class DedupResult:
    """Which documents survive dedup, and which cluster representative each removed one maps to."""

    keep: list[int] = field(default_factory=list)
    """Kept ids (one per cluster, the first in input order), ascending."""
    removed: dict[int, int] = field(default_factory=dict)
    """Removed id -> id of its cluster's kept representative."""
    n_exact: int = 0
    """Removed because the normalized text equals an earlier document's."""
    n_near: int = 0
    """Removed as near-duplicates (the rest of `removed`)."""
    n_candidates: int = 0
    """LSH candidate pairs checked by exact Jaccard (the cost of confirmation)."""


def _find(parent: dict[int, int], x: int) -> int:
    """Root of x with path halving; roots are the smallest id of their set."""
    while parent.get(x, x) != x:
        parent[x] = parent.get(parent[x], parent[x])
        x = parent[x]
    return x


def _cluster_roots(reps: np.ndarray, confirmed: np.ndarray) -> np.ndarray:
    """Smallest id of each document's cluster, given its exact representative and the confirmed pairs.

    Union-find runs over the confirmed pairs only (a few % of documents); every other document's
    root is its exact representative.
    """
    parent: dict[int, int] = {}
    for i, j in confirmed.tolist():
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    if not parent:
        return reps.copy()
    nodes = np.array(sorted(parent), dtype=np.int64)
    node_roots = np.array([_find(parent, x) for x in nodes.tolist()], dtype=np.int64)
    pos = np.minimum(np.searchsorted(nodes, reps), nodes.size - 1)
    hit = nodes[pos] == reps
    return np.where(hit, node_roots[pos], reps)


def cluster(sk: Sketch, confirmed: np.ndarray, n_candidates: int = 0) -> DedupResult:
    """Union-find over exact groups and confirmed near pairs; each cluster keeps its smallest id."""
    order = np.argsort(sk.ids, kind="stable")
    ids = sk.ids[order]
    reps = exact_representatives(sk)[order]
    roots = _cluster_roots(reps, confirmed)
    gone = roots != ids
    return DedupResult(
        keep=ids[~gone].tolist(),
        removed=dict(zip(ids[gone].tolist(), roots[gone].tolist())),
        n_exact=int(np.count_nonzero(gone & (reps != ids))),
        n_near=int(np.count_nonzero(gone & (reps == ids))),
        n_candidates=n_candidates,
    )


def expand_exact_pairs(sk: Sketch, confirmed: np.ndarray) -> list[tuple[int, int]]:
    """Confirmed representative pairs plus exact duplicates, as all (i, j) id pairs, i < j, sorted.

    Every pair within an exact group, and every member of two exact groups whose representatives
    were confirmed (their 5-gram sets are identical to the representatives').
    """
    members: dict[int, list[int]] = {}
    for doc, rep in zip(sk.ids.tolist(), exact_representatives(sk).tolist()):
        members.setdefault(rep, []).append(doc)
    out: set[tuple[int, int]] = set()
    for group in members.values():
        if len(group) > 1:
            group.sort()
            out.update((a, b) for k, a in enumerate(group) for b in group[k + 1 :])
    for i, j in confirmed.tolist():
        out.update((min(a, b), max(a, b)) for a in members[i] for b in members[j])
    return sorted(out)


def _near_pairs_of_representatives(
    texts: Sequence[str], threshold: float, engine: Engine | None
) -> tuple[Sketch, np.ndarray, int]:
    """Sketch of the texts, confirmed pairs among exact-group representatives, candidate count."""
    sk = sketch(texts, params=SketchParams.for_threshold(threshold, engine=engine))
    candidates = candidate_pairs(sk)
    return sk, confirm_pairs(candidates, texts, threshold), len(candidates)


def near_duplicate_pairs(
    texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, *, engine: Engine | None = None
) -> list[tuple[int, int]]:
    """All found pairs (i, j), i < j, sorted, whose normalized 5-gram sets have Jaccard >= threshold.

    Exact duplicates (same normalized text) are included. engine: MinHash engine (default: fastest).
    """
    sk, confirmed, _ = _near_pairs_of_representatives(texts, threshold, engine)
    return expand_exact_pairs(sk, confirmed)


def dedup(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, *, engine: Engine | None = None) -> DedupResult:
    """Exact then near-duplicate dedup of texts (ids are positions); see the module docstring."""
    sk, confirmed, n_candidates = _near_pairs_of_representatives(texts, threshold, engine)
    return cluster(sk, confirmed, n_candidates)
