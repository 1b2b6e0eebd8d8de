"""Stage 7 (synth, template back-end): contract, grounding, timestamps, languages, determinism."""
from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest

from ta_data.chunk import Chunk, ChunkConfig, chunk_documents
from ta_data.demo import COURSE_DIR
from ta_data.readers import read_markdown, read_qa, read_srt
from ta_data.records import QAPair
from ta_data.sentences import split_sentences
from ta_data.synth import KINDS, SynthConfig, key_questions, qa_records, synthesize
from ta_data.synth_text import BLANK, PHRASES, candidate_sentences, key_term

CITE_RE = re.compile(r" \[(\d{2}:\d{2}:\d{2})\]$")
CONFIG = ChunkConfig(min_tokens=60, max_tokens=200, overlap_tokens=20)


def _chunks(name: str, reader=read_markdown) -> list[Chunk]:
    return list(chunk_documents(reader(COURSE_DIR / name, []), CONFIG))


@pytest.fixture(scope="module")
def course_chunks() -> list[Chunk]:
    return _chunks("notes_en.md") + _chunks("notes_zh.md") + _chunks("lecture_02.srt", read_srt)


def _uncite(text: str, stamp: str | None) -> str:
    if stamp is None:
        assert CITE_RE.search(text) is None
        return text
    match = CITE_RE.search(text)
    assert match is not None and match.group(1) == stamp, text
    return text[: match.start()]


def _check_grounded(rec: dict, chunk: Chunk) -> None:
    kind, stamp, text = rec["meta"]["kind"], rec["meta"]["timestamp"], chunk.text
    if kind == "extract":
        lines = rec["output"].split("\n")
        assert len(lines) >= 2 and all(line.startswith("- ") for line in lines)
        assert all(_uncite(line[2:], stamp) in text for line in lines)
    elif kind == "summary":
        body = _uncite(rec["output"], stamp)
        assert all(piece.text in text for piece in split_sentences(body))
    elif kind == "quiz":
        term = _uncite(rec["output"], stamp)
        assert term in text and BLANK in rec["instruction"]
        clozes = [s.text.replace(term, BLANK, 1) for s in candidate_sentences(text) if term in s.text]
        assert any(rec["instruction"].endswith(cloze) for cloze in clozes)  # a chunk sentence, blanked
    else:
        assert _uncite(rec["output"], stamp) in text  # the key sentence, verbatim


def test_records_follow_the_sft_contract_and_are_grounded(course_chunks: list[Chunk]) -> None:
    by_id = {c.id: c for c in course_chunks}
    records = list(synthesize(course_chunks))
    assert {r["meta"]["kind"] for r in records} == set(KINDS)
    for rec in records:
        assert set(rec) == {"instruction", "input", "output", "meta"}
        assert all(isinstance(rec[k], str) and rec[k] for k in ("instruction", "input", "output"))
        meta = rec["meta"]
        assert {"source", "timestamp", "kind"} <= set(meta) and meta["kind"] in KINDS
        chunk = by_id[meta["chunk"]]
        assert rec["input"] == chunk.text and meta["source"] == chunk.source
        _check_grounded(rec, chunk)
        json.dumps(rec, ensure_ascii=False)  # serializable as one sft.jsonl line


def test_transcript_answers_cite_the_chunk_start(course_chunks: list[Chunk]) -> None:
    lecture = [c for c in course_chunks if c.start is not None]
    records = list(synthesize(lecture))
    assert records
    starts = {c.id: c.start for c in lecture}
    for rec in records:
        start = starts[rec["meta"]["chunk"]]
        stamp = f"{int(start) // 3600:02d}:{int(start) % 3600 // 60:02d}:{int(start) % 60:02d}"
        assert rec["meta"]["timestamp"] == stamp
        for line in rec["output"].split("\n"):  # every answer, every bullet
            assert line.endswith(f"[{stamp}]")
    notes = [r for r in synthesize(c for c in course_chunks if c.start is None)]
    assert all(r["meta"]["timestamp"] is None and "[" not in r["output"][-11:] for r in notes)


def test_phrasing_follows_the_chunk_language(course_chunks: list[Chunk]) -> None:
    for chunk in course_chunks:
        if chunk.lang not in ("zh", "en") or chunk.start is not None:
            continue
        for rec in synthesize([chunk]):
            kind = rec["meta"]["kind"]
            templates = PHRASES[kind][chunk.lang]
            prefixes = [t.split("{")[0] for t in templates]
            assert any(rec["instruction"].startswith(p) for p in prefixes), (chunk.lang, rec["instruction"])


def test_hand_written_chunk_asks_about_its_key_term() -> None:
    text = (
        "The learning rate sets how far each update moves the weights. "
        "If the learning rate is too large, the loss diverges. "
        "Momentum averages past gradients to smooth the steps. "
        "A small learning rate makes training slow but stable."
    )
    chunk = Chunk("c1", text, "hand.md", "Optimizers", None, None, "en", 50)
    assert key_term("If the learning rate is too large, the loss diverges.", text) == "learning rate"
    questions = key_questions(chunk, limit=2)
    assert "learning rate" in questions[0].question and questions[0].sentence in text
    assert len({q.term.lower() for q in questions}) == len(questions)  # one term per question
    quiz = [r for r in synthesize([chunk], SynthConfig(kinds=("quiz",), per_chunk=1))]
    assert len(quiz) == 1 and BLANK in quiz[0]["instruction"] and quiz[0]["output"] in text
    zh = "学习率决定每一步走多远。学习率太大，损失会发散。动量把过去的梯度平均起来，让更新更平稳。学习率太小，训练很慢。"
    zh_chunk = Chunk("c2", zh, "hand_zh.md", None, None, None, "zh", 80)
    assert key_questions(zh_chunk, limit=1)[0].term == "学习率"


def test_kinds_and_per_chunk_are_respected(course_chunks: list[Chunk]) -> None:
    records = list(synthesize(course_chunks[:4], SynthConfig(kinds=["summary", "answer"], per_chunk=1)))
    kinds = [r["meta"]["kind"] for r in records]
    assert set(kinds) == {"summary", "answer"}
    for chunk in course_chunks[:4]:
        mine = [r["meta"]["kind"] for r in records if r["meta"]["chunk"] == chunk.id]
        assert mine.count("answer") <= 1 and mine.count("summary") <= 1
        assert mine == sorted(mine, key=["summary", "answer"].index)  # config order
    with pytest.raises(ValueError, match="refusal"):
        SynthConfig(kinds=("answer", "refusal"))
    with pytest.raises(ValueError, match="per_chunk"):
        SynthConfig(per_chunk=0)


def test_same_input_same_output_and_dict_chunks(course_chunks: list[Chunk]) -> None:
    first = [json.dumps(r, ensure_ascii=False) for r in synthesize(course_chunks)]
    rows = [json.loads(c.to_json()) for c in course_chunks]  # as read back from chunks.jsonl
    assert [json.dumps(r, ensure_ascii=False) for r in synthesize(rows)] == first
    other = list(synthesize(course_chunks, SynthConfig(seed=7)))
    assert [r["output"] for r in other] == [json.loads(r)["output"] for r in first]
    assert [r["instruction"] for r in other] != [json.loads(r)["instruction"] for r in first]


def test_chunk_without_statements_gives_nothing() -> None:
    table = Chunk("t", "| a | b |\n|---|---|\n| 1 | 2 |", "t.md", None, None, None, "en", 20)
    assert list(synthesize([table])) == []
    assert asdict(table)["id"] == "t"


def test_qa_records_from_the_demo_faq() -> None:
    rejects: list = []
    pairs = list(read_qa(COURSE_DIR / "faq.md", rejects))
    assert pairs and not rejects
    records = list(qa_records(pairs))
    assert len(records) == len(pairs)
    for pair, rec in zip(pairs, records):
        assert rec == {
            "instruction": pair.question,
            "input": "",
            "output": pair.answer,
            "meta": {"source": pair.source, "timestamp": None, "kind": "answer", "line": pair.line},
        }
    logged = QAPair("When is the exam?", "In week 12.", "qa_log.jsonl", 3, {"timestamp": "00:41:07"})
    bad = QAPair("Q?", "A.", "qa_log.jsonl", 4, {"timestamp": "yesterday"})
    stamps = [r["meta"]["timestamp"] for r in qa_records([logged, bad])]
    assert stamps == ["00:41:07", None]
