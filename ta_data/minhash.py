"""MinHash signatures, LSH band keys and bucketing over character n-gram shingles, in numpy.

The pieces are separate so a corpus can be sketched in shards and merged (see `ta_data.dedup`):

- `shingle_hashes`: every character n-gram of each text -> one uint64 (flat array + row offsets).
- `minhash_signatures_from_hashes`: (docs, num_perm) uint32 MinHash signatures, by one of two engines
  that give different (not interchangeable) signatures: "rensa" (native, `rensa` package) or "numpy".
- `lsh_layout`: bands x rows for a Jaccard threshold.
- `band_keys`: (docs, bands) uint64, one key per band; equal keys in the same band = LSH candidates.
- `bucket_pairs`: candidate pairs from band keys of any number of merged shards.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

Engine = Literal["rensa", "numpy"]

SHINGLE_CHARS = 5
# Code points stop at 0x10FFFF, so this value marks "past the end of a document" unambiguously.
_SENTINEL = np.uint64(0x110000)
# Multipliers: the 64-bit FNV prime for the rolling polynomial, splitmix64/murmur3 finalizer constants.
_POLY = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_NUMPY_BLOCK_ROWS = 256


def default_engine() -> Engine:
    """"rensa" when the package is importable (its MinHash step is ~3x faster), else "numpy"."""
    try:
        import rensa  # noqa: F401
    except ImportError:
        return "numpy"
    return "rensa"


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, in place on a uint64 array: spreads the polynomial's low-entropy bits."""
    h ^= h >> np.uint64(30)
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(31)
    return h


def _code_points(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code points of all texts, each followed by n sentinels, as uint64; each text's start and length.

    Memory: 8 bytes per character plus 8 * n per text (about 3 MB per 1,000 texts of 360 chars).
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    joined = ("\x00" * n).join(texts) + "\x00" * n
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    starts = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(lengths[:-1] + n, out=starts[1:])
    # Overwrite the separators by position, so a "\x00" inside a text stays a character.
    cp[(starts + lengths)[:, None] + np.arange(n)] = _SENTINEL
    return cp, starts, lengths


def shingle_hashes(texts: Sequence[str], n: int = SHINGLE_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """Hash every character n-gram of each text to a uint64.

    A text shorter than n has one shingle, the whole text (padded with sentinels, so "ab" and "ab\\0"
    differ); an empty text therefore has one shingle too. Shingles repeat within a row (a multiset);
    MinHash ignores repeats, `unique_rows` drops them for Jaccard.

    Returns (hashes, offsets): row i is hashes[offsets[i]:offsets[i + 1]], offsets has len(texts) + 1
    entries. Memory: 8 bytes per shingle (about 2.9 MB per 1,000 texts of 360 chars).
    """
    if not texts:
        return np.zeros(0, dtype=np.uint64), np.zeros(1, dtype=np.int64)
    cp, starts, lengths = _code_points(texts, n)
    n_win = cp.size - n + 1
    h = cp[:n_win].copy()
    for k in range(1, n):  # rolling polynomial over the n code points of each window
        h *= _POLY
        h += cp[k : k + n_win]
    _mix64(h)
    counts = np.maximum(lengths - n + 1, 1)
    # Valid window starts are starts[i] .. starts[i] + counts[i] - 1: mark them with a +1/-1 sweep.
    # Both index sets are duplicate-free (a text's end is before the next text's start), so plain
    # fancy-index updates are exact.
    sweep = np.zeros(n_win + 1, dtype=np.int32)
    sweep[starts] += 1
    sweep[starts + counts] -= 1
    valid = np.cumsum(sweep[:-1], dtype=np.int32).astype(bool)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return h[valid], offsets


def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique without its hash-table pass, 3x faster on short rows)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if values.size else values


def unique_rows(hashes: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Each row of a flat (hashes, offsets) array as a sorted array of distinct values (a set)."""
    return [_sorted_distinct(hashes[offsets[i] : offsets[i + 1]]) for i in range(offsets.size - 1)]


def sorted_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard |a & b| / |a | b| of two sorted arrays of distinct values (1.0 if both empty)."""
    if a.size == 0 and b.size == 0:
        return 1.0
    if a.size > b.size:
        a, b = b, a
    pos = np.searchsorted(b, a)
    pos[pos == b.size] = 0
    inter = int(np.count_nonzero(b[pos] == a)) if b.size else 0
    return inter / (a.size + b.size - inter)


def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply-shift hash parameters (odd a, any b), one pair per permutation."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def _minhash_numpy(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Permutation k of shingle x is (a_k * x + b_k mod 2^64) >> 32; the signature keeps each row's min.

    Work: 4 passes over the shingles per permutation. Rows go 256 at a time (~90k shingles, 0.7 MB
    per array) so the 128 passes stay in cache: 2.2x faster than whole 4,096-text chunks.
    """
    a, b = _perm_params(num_perm, seed)
    out = np.empty((offsets.size - 1, num_perm), dtype=np.uint32)
    for lo in range(0, offsets.size - 1, _NUMPY_BLOCK_ROWS):
        hi = min(lo + _NUMPY_BLOCK_ROWS, offsets.size - 1)
        x = hashes[offsets[lo] : offsets[hi]]
        starts = offsets[lo:hi] - offsets[lo]
        y = np.empty_like(x)
        for k in range(num_perm):
            np.multiply(x, a[k], out=y)
            y += b[k]
            y >>= np.uint64(32)
            out[lo:hi, k] = np.minimum.reduceat(y, starts)
    return out


def _minhash_rensa(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """rensa's RMinHash over pre-hashed shingles (native; its values are 32-bit)."""
    from rensa import RMinHash

    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(offsets.size - 1, num_perm)


def minhash_signatures_from_hashes(
    hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1, engine: Engine | None = None
) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures of the rows of (hashes, offsets); rows must be non-empty.

    Signatures are comparable only between runs with the same engine, rensa version, num_perm and seed.
    """
    engine = engine or default_engine()
    if offsets.size == 1:
        return np.zeros((0, num_perm), dtype=np.uint32)
    if engine == "rensa":
        return _minhash_rensa(hashes, offsets, num_perm, seed)
    if engine == "numpy":
        return _minhash_numpy(hashes, offsets, num_perm, seed)
    raise ValueError(f"unknown MinHash engine {engine!r}; use 'rensa' or 'numpy'")


def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray | float:
    """P(two docs with Jaccard s share at least one band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.power(similarity, rows)) ** bands


def lsh_layout(threshold: float, num_perm: int = 128, min_recall: float = 0.999) -> tuple[int, int]:
    """Bands x rows for a threshold: fewest false candidates among layouts that catch a pair at the threshold.

    Candidates are confirmed by exact Jaccard, so a false candidate costs one set intersection while a
    missed pair is lost for good. Among layouts with bands * rows <= num_perm and
    P(candidate | s = threshold) >= min_recall, pick the one with the least false-positive mass
    (the integral of P over s in [0, threshold]). datasketch instead weighs false-negative and
    false-positive mass equally, which at t=0.9 picks 5x25 and misses 69% of pairs at s = 0.9.
    128 permutations: t=0.9 -> 14x9 (P(0.9) = 0.9999), t=0.8 -> 21x6 (P(0.8) = 0.9995).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    grid = np.linspace(0.0, threshold, 1001)
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) < min_recall:
            continue
        p = candidate_probability(grid, bands, rows)
        fp_mass = float(((p[1:] + p[:-1]) / 2 * np.diff(grid)).sum())  # trapezoid rule
        if best is None or fp_mass < best[0]:
            best = (fp_mass, bands, rows)
    if best is None:
        return num_perm, 1
    return best[1], best[2]


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: one hash per band of `rows` signature values, salted by the band index.

    The salt keeps keys of different bands apart, so all bands can be bucketed in one sort.
    Memory: 8 * bands bytes per doc (112 bytes at 14 bands), against 4 * num_perm for the signature.
    """
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows needs {bands * rows} permutations, have {signatures.shape[1]}")
    cells = signatures[:, : bands * rows].reshape(-1, bands, rows).astype(np.uint64)
    h = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64) * _MIX2, cells.shape[:2]).copy()
    for r in range(rows):
        h ^= cells[:, :, r]
        h *= _POLY
        h ^= h >> np.uint64(29)
    return _mix64(h)


def bucket_pairs(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Candidate pairs (m, 2) int64, i < j, sorted and distinct: docs with an equal key in some band.

    keys: (docs, bands) from `band_keys`, ids: (docs,) global ids; rows may come from many shards
    concatenated. A bucket of k docs yields k(k-1)/2 pairs, so drop exact duplicates first.
    """
    bands = keys.shape[1] if keys.ndim == 2 else 1
    flat = keys.ravel()
    order = np.argsort(flat)
    flat, owner = flat[order], np.repeat(np.asarray(ids, dtype=np.int64), bands)[order]
    run_start = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    run_len = np.diff(np.append(run_start, flat.size))
    chunks = [np.zeros((0, 2), dtype=np.int64)]
    for k in np.unique(run_len[run_len > 1]).tolist():  # one vectorized step per bucket size
        members = owner[run_start[run_len == k][:, None] + np.arange(k)]
        i, j = np.triu_indices(k, 1)
        chunks.append(np.stack([members[:, i].ravel(), members[:, j].ravel()], axis=1))
    pairs = np.sort(np.concatenate(chunks), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0)
