"""Stage 8 (refusals): share, language, A/B context mismatch, determinism."""
from __future__ import annotations

import re

import pytest

from ta_data.chunk import Chunk, ChunkConfig, chunk_documents
from ta_data.demo import COURSE_DIR
from ta_data.readers import iter_course_dir, read_qa
from ta_data.refusals import REFUSAL_EN, REFUSAL_ZH, make_refusals, refusal_count, refusal_text
from ta_data.synth import key_questions

OFF_COURSE = [
    "What is the capital of France?",
    "Which stock should I buy this week?",
    "今天北京的天气怎么样？",
    "推荐一部好看的电影。",
]


@pytest.fixture(scope="module")
def chunks() -> list[Chunk]:
    docs = list(iter_course_dir(COURSE_DIR, []))
    return list(chunk_documents(docs, ChunkConfig(min_tokens=60, max_tokens=200, overlap_tokens=20)))


@pytest.mark.parametrize(("n_course", "share", "expected"), [(90, 0.1, 10), (100, 0.1, 11), (0, 0.1, 0), (30, 0.25, 10), (7, 0.0, 0)])
def test_count_makes_refusals_the_share_of_the_final_set(n_course: int, share: float, expected: int) -> None:
    assert refusal_count(n_course, share) == expected
    if n_course:
        assert abs(expected / (n_course + expected) - share) <= 1 / (n_course + expected)


def test_share_and_halves(chunks: list[Chunk]) -> None:
    records = make_refusals(chunks, OFF_COURSE, share=0.1, seed=0, n_course=180)
    assert len(records) == 20
    origins = [r["meta"]["origin"] for r in records]
    assert origins.count("off_course") == 10 and origins.count("mismatch") == 10
    for rec in records:
        assert set(rec) == {"instruction", "input", "output", "meta"}
        assert rec["meta"]["kind"] == "refusal" and rec["meta"]["timestamp"] is None
        assert rec["output"] in (REFUSAL_ZH, REFUSAL_EN)
    assert len(make_refusals(chunks, OFF_COURSE, share=0.2)) == refusal_count(len(chunks), 0.2)


def test_refusal_is_in_the_question_language(chunks: list[Chunk]) -> None:
    assert refusal_text("What is a tensor?") == REFUSAL_EN
    assert refusal_text("张量是什么？") == REFUSAL_ZH
    assert refusal_text("什么是 learning rate 衰减？") == REFUSAL_ZH
    for rec in make_refusals(chunks, OFF_COURSE, share=0.1, n_course=300):
        # a naive reference: Chinese when its Chinese characters at least match its English words
        # ("How does the material describe 划分?" is an English question)
        text = rec["instruction"]
        cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
        words = len(re.findall(r"[A-Za-z]+", text))
        zh = cjk > 0 and cjk >= words
        assert rec["output"] == (REFUSAL_ZH if zh else REFUSAL_EN), rec["instruction"]


def test_mismatch_context_cannot_answer(chunks: list[Chunk]) -> None:
    by_id = {c.id: c for c in chunks}
    asked = {}  # question -> the chunks it was synthesized from
    for chunk in chunks:
        for item in key_questions(chunk, 0, limit=3):
            asked.setdefault(item.question, []).append((chunk, item))
    mismatches = [r for r in make_refusals(chunks, [], share=0.1, n_course=200) if r["meta"]["origin"] == "mismatch"]
    assert len(mismatches) == refusal_count(200, 0.1)  # without off-course questions, all are mismatches
    for rec in mismatches:
        context = by_id[rec["meta"]["chunk"]]
        assert rec["input"] == context.text and rec["meta"]["source"] == context.source
        origins = asked[rec["instruction"]]
        assert any(
            (a.source, a.chapter) != (context.source, context.chapter)
            and item.sentence not in context.text
            and item.term.lower() not in context.text.lower()
            for a, item in origins
        )


def test_off_course_questions_from_the_demo_list(chunks: list[Chunk]) -> None:
    questions = [pair.question for pair in read_qa(COURSE_DIR / "refusals.md", [])]
    assert questions
    records = make_refusals(chunks, questions, share=0.5, n_course=len(questions))
    off = [r for r in records if r["meta"]["origin"] == "off_course"]
    assert off and {r["instruction"] for r in off} <= set(questions)
    contexts = {c.text for c in chunks}
    assert all(r["input"] in contexts for r in records)


def test_deterministic_and_seeded(chunks: list[Chunk]) -> None:
    first = make_refusals(chunks, OFF_COURSE, seed=3, n_course=100)
    assert make_refusals(list(chunks), list(OFF_COURSE), seed=3, n_course=100) == first
    assert make_refusals(chunks, OFF_COURSE, seed=4, n_course=100) != first


def test_single_chapter_falls_back_to_off_course_and_errors_are_clear() -> None:
    one = [Chunk("a", "The learning rate sets the step size. The learning rate matters.", "n.md", "A", None, None, "en", 20)]
    records = make_refusals(one, ["Who won the match?"], share=0.5, n_course=4)
    assert len(records) == 4 and {r["meta"]["origin"] for r in records} == {"off_course"}
    assert make_refusals(one, [], share=0.5, n_course=4) == []  # nothing can be made: no B, no questions
    with pytest.raises(ValueError, match="no chunks"):
        make_refusals([], OFF_COURSE, n_course=10)
    with pytest.raises(ValueError, match="share"):
        make_refusals(one, OFF_COURSE, share=1.0)


def test_mixed_questions_pick_the_language_without_lingua(monkeypatch):
    """CI installs no lingua: the script fallback alone must still answer Chinese questions in Chinese."""
    import ta_data.quality as quality

    monkeypatch.setattr(quality, "_lingua_detector", lambda: None)
    assert refusal_text("什么是 learning rate 衰减？") == REFUSAL_ZH
    assert refusal_text("What does 张量 mean in PyTorch?") == REFUSAL_EN
