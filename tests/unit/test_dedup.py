"""Exact + MinHash near-duplicate dedup: planted zh/en duplicates, template hard negatives, a naive
all-pairs Jaccard reference, union-find representatives, sharded sketches, normalization edge cases."""
from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest

from ta_data import dedup as D
from ta_data import minhash as M

RENSA = pytest.mark.skipif(M.default_engine() != "rensa", reason="rensa not installed")
ENGINES = ["numpy", pytest.param("rensa", marks=RENSA)]
ZH_CHARS = "".join(map(chr, range(0x4E00, 0x4E00 + 800)))  # CJK unified ideographs
EN_WORDS = """gradient descent learning rate transformer attention layer batch size epoch model token loss
function optimizer weight decay dropout embedding vector matrix tensor python numpy kernel memory cache lecture
chapter student teacher course exercise answer question example proof theorem lemma""".split()


def zh_text(rng: random.Random, n: int) -> str:
    """About n characters of Chinese word salad with full-width punctuation."""
    out = []
    while sum(map(len, out)) < n:
        out.append("".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(6, 14))) + rng.choice("，。；？"))
    return "".join(out)


def en_text(rng: random.Random, n: int) -> str:
    """About n characters of English word salad."""
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < n:
        out.append(rng.choice(EN_WORDS) + (rng.choice(",.") if rng.random() < 0.1 else ""))
    return " ".join(out).capitalize()


def scatter(rng: random.Random, text: str, n_ops: int) -> str:
    """n_ops scattered character substitutions / insertions / deletions."""
    chars = list(text)
    for _ in range(n_ops):
        pos = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.6:
            chars[pos] = rng.choice(ZH_CHARS if "\u4e00" <= chars[pos] <= "\u9fff" else "abcdefghij")
        elif op < 0.8:
            chars.insert(pos, rng.choice("xyz"))
        else:
            del chars[pos]
    return "".join(chars)


def fullwidth_and_spaces(text: str) -> str:
    """Format-only noise that NFKC + case-fold + whitespace collapse undo exactly."""
    fw = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}
    out = "".join(fw.get(c, c) if i % 3 else c for i, c in enumerate(text))
    return "  " + out.replace(" ", " \u3000\t").upper() + "\n"


def naive_shingles(text: str) -> set[str]:
    """5-gram set of the normalized text, written out plainly (the definition the module must meet)."""
    t = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return {t} if len(t) < 5 else {t[i : i + 5] for i in range(len(t) - 4)}


def jaccard(x: str, y: str) -> float:
    """Exact Jaccard of two texts' normalized 5-gram sets."""
    a, b = naive_shingles(x), naive_shingles(y)
    return len(a & b) / len(a | b)


def naive_jaccards(texts: list[str]) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair (i < j) of the texts' 5-gram sets, by Python set operations."""
    sets = [naive_shingles(t) for t in texts]
    n = len(texts)
    return {(i, j): len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i in range(n) for j in range(i + 1, n)}


def corpus(seed: int = 7) -> list[str]:
    """~200 docs: originals, variants at 0.3-4% scattered edits (straddling J = 0.9), exact copies,
    full-width/whitespace variants, and template families sharing 60% boilerplate, shuffled."""
    rng = random.Random(seed)
    docs: list[str] = []
    for k in range(60):
        base = zh_text(rng, 300) if k % 2 else en_text(rng, 350)
        docs.append(base)
        docs.append(scatter(rng, base, max(1, int(len(base) * rng.choice([0.003, 0.01, 0.013, 0.016, 0.02, 0.04])))))
        if k % 4 == 0:
            docs.append(base)
        if k % 5 == 0 and k % 2 == 0:
            docs.append(fullwidth_and_spaces(base))
    for k in range(8):  # 8 families x 6 docs sharing 60% boilerplate: Jaccard ~0.4, must not merge
        boiler = zh_text(rng, 240) if k % 2 else en_text(rng, 240)
        for _ in range(6):
            body = zh_text(rng, 160) if k % 2 else en_text(rng, 160)
            docs.append(boiler + body if k % 4 < 2 else body + boiler)
    rng.shuffle(docs)
    return docs


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], dict[tuple[int, int], float]]:
    texts = corpus()
    return texts, naive_jaccards(texts)


@pytest.mark.parametrize("engine", ENGINES)
def test_pairs_equal_naive_all_pairs_jaccard(engine, reference):
    texts, jaccards = reference
    for t in (0.9, 0.8):
        expected = sorted(p for p, j in jaccards.items() if j >= t)
        assert D.near_duplicate_pairs(texts, t, engine=engine) == expected
    # the corpus has positives and pairs just under the threshold that confirmation must reject
    assert sum(j >= 0.9 for j in jaccards.values()) > 30 and sum(0.85 <= j < 0.9 for j in jaccards.values()) > 10


def test_planted_duplicates_merge_and_templates_do_not():
    rng = random.Random(3)
    zh, en = zh_text(rng, 300), en_text(rng, 350)
    boiler = en_text(rng, 300)
    templates = [boiler + " " + en_text(rng, 200) for _ in range(5)]
    texts = [zh, scatter(rng, zh, 1), fullwidth_and_spaces(zh), en, en, fullwidth_and_spaces(en), scatter(rng, en, 2)]
    texts += templates
    result = D.dedup(texts)
    assert result.keep == [0, 3, 7, 8, 9, 10, 11]
    assert result.removed == {1: 0, 2: 0, 4: 3, 5: 3, 6: 3}
    assert (result.n_exact, result.n_near) == (3, 2)  # the format variants normalize to the same text
    assert max(jaccard(a, b) for a in templates for b in templates if a != b) < 0.7


def test_union_find_keeps_first_in_input_order_across_chains():
    rng = random.Random(11)
    a = en_text(rng, 400)
    half = len(a) // 2
    b = scatter(random.Random(1), a[:half], 3) + a[half:]  # edits in the first half
    c = b[:half] + scatter(random.Random(2), b[half:], 3)  # then in the second half
    assert jaccard(a, b) >= 0.9 and jaccard(b, c) >= 0.9 and jaccard(a, c) < 0.9  # a chain, not a clique
    other = zh_text(rng, 300)
    texts = [other, c, a, b, c]
    result = D.dedup(texts)
    assert result.keep == [0, 1]
    assert result.removed == {2: 1, 3: 1, 4: 1}
    assert (result.n_exact, result.n_near) == (1, 2)


def test_output_is_deterministic():
    texts = corpus(seed=21)
    first = D.dedup(texts)
    assert D.dedup(list(texts)) == first
    assert D.near_duplicate_pairs(texts) == D.near_duplicate_pairs(texts)
    np.testing.assert_array_equal(D.minhash_signatures(texts[:5]), D.minhash_signatures(texts[:5]))


def test_empty_and_single_and_blank_inputs():
    assert D.near_duplicate_pairs([]) == []
    assert D.dedup([]) == D.DedupResult()
    assert D.dedup(["only one"]) == D.DedupResult(keep=[0])
    assert D.near_duplicate_pairs(["only one"]) == []
    result = D.dedup(["", "  \n", "ab", "AB", "abc"])
    assert result.keep == [0, 2, 4] and result.removed == {1: 0, 3: 2}


def test_sharded_sketches_merge_to_the_single_machine_result():
    texts = corpus(seed=5)
    params = D.SketchParams.for_threshold(0.9, engine="numpy")
    order = np.random.default_rng(0).permutation(len(texts))
    shards = np.array_split(order, 3)
    parts = [D.sketch([texts[i] for i in ids], ids=ids, params=params) for ids in shards]
    merged = D.merge_sketches(parts)
    by_id = {i: t for i, t in enumerate(texts)}
    confirmed = D.confirm_pairs(D.candidate_pairs(merged), by_id, params.threshold)
    sharded, single = D.cluster(merged, confirmed), D.dedup(texts, engine="numpy")
    assert (sharded.keep, sharded.removed, sharded.n_exact, sharded.n_near) == (
        single.keep, single.removed, single.n_exact, single.n_near)
    assert D.expand_exact_pairs(merged, confirmed) == D.near_duplicate_pairs(texts, engine="numpy")
    with pytest.raises(ValueError, match="params differ"):
        D.merge_sketches([parts[0], D.sketch(texts[:3], params=D.SketchParams.for_threshold(0.8, engine="numpy"))])


# Compositions across a run boundary, Hangul jamo, half-width kana + voiced mark, ligatures, compatibility
# ideographs, odd spaces, case-folds that expand, a math letter outside the BMP, lone surrogates.
TRICKY = ["Ａ\u0301", "e\u0301", "\u1100\u1161", "ｶﾞ", "か\uff9e", "ﬁ", "①", "㍻", "\u3000", "Ⅻ", "ß", "İ", "\u212b",
          "\uf900", "，", "。", "\u00a0", "\u2028", "ｘ", "中", "a", " ", "\t", "\u0323\u0301", "\U0001d400", "\ud800"]


def test_fast_normalization_matches_plain_nfkc_casefold_whitespace():
    rng = random.Random(0)
    samples = ["".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 12))) for _ in range(2000)]
    for s in samples:
        assert D._nfkc(s) == unicodedata.normalize("NFKC", s)
        assert D.normalize(s) == " ".join(unicodedata.normalize("NFKC", s).casefold().split())
    assert D.normalize_many(samples) == [D.normalize(s) for s in samples]
    assert D.normalize("  Ｈｅｌｌｏ，\u3000WORLD\n ") == "hello, world"


def test_shingle_hashes_follow_the_5gram_set_definition():
    texts = ["xxabcde", "abcdeyy", "ab", "ab\x00", "", "aaaaaaa"]
    hashes, offsets = M.shingle_hashes(texts)
    assert np.diff(offsets).tolist() == [3, 3, 1, 1, 1, 3]
    rows = M.unique_rows(hashes, offsets)
    assert [r.size for r in rows] == [3, 3, 1, 1, 1, 1]
    assert np.intersect1d(rows[0], rows[1]).size == 1  # "abcde" hashes the same wherever it occurs
    assert rows[2][0] != rows[3][0] and rows[4][0] not in (rows[2][0], rows[3][0])
    assert M.sorted_jaccard(rows[0], rows[1]) == pytest.approx(1 / 5)


def test_lsh_layout_catches_pairs_at_the_threshold():
    for t in (0.95, 0.9, 0.8, 0.7):
        bands, rows = M.lsh_layout(t)
        assert bands * rows <= 128 and M.candidate_probability(t, bands, rows) >= 0.999
    assert M.lsh_layout(0.9) == (16, 8)


def test_bucket_pairs_lists_every_pair_sharing_a_band_once():
    keys = np.array([[1, 10], [1, 11], [2, 10], [3, 12], [1, 10]], dtype=np.uint64)
    ids = np.array([5, 6, 7, 8, 9])
    assert M.bucket_pairs(keys, ids).tolist() == [[5, 6], [5, 7], [5, 9], [6, 9], [7, 9]]
    assert M.bucket_pairs(keys[:0], ids[:0]).shape == (0, 2)
