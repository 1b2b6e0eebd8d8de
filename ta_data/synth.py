"""Stage 7 of ta_data ("Synthesize"), the ``template`` back-end: chunks -> Alpaca SFT records.

Deterministic and extractive (the ``teacher`` back-end is :mod:`ta_data.teacher`). From each
chunk, in its language (zh or en; see :mod:`ta_data.synth_text` for how sentences and terms are
chosen), with the chunk text as ``input``:

- ``answer``: "what is said about <key term>?" -> the key sentence holding that term;
- ``extract``: "list the key points" -> the top sentences by salience, as "- " bullets, in text order;
- ``summary``: "summarize" -> the lead sentence plus the top sentences, in text order;
- ``quiz``: a cloze, the key sentence with its key term blanked -> the term.

Every output is copied from the chunk, so it is grounded by construction. For a transcript chunk
(``start`` set) each output, and each bullet, ends with the chunk start as ``[HH:MM:SS]`` and
``meta.timestamp`` holds it. ``meta`` is ``{source, timestamp, kind, chunk}`` (chunk: its id).
Phrasings (several per kind and language, in ``synth_text.PHRASES``) are picked by a stable hash
of (seed, chunk id, kind, index): the same chunks and config always give the same records.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ta_data.chunk import Chunk
from ta_data.demo_parse import seconds_to_hms
from ta_data.records import QAPair
from ta_data.synth_text import (
    BLANK,
    PHRASES,
    Sentence,
    candidate_sentences,
    chunk_language,
    join_sentences,
    key_term,
    pick,
    ranked,
)

KINDS = ("answer", "extract", "summary", "quiz")
"""Kinds the template back-end writes (refusals come from ta_data.refusals)."""
_HMS_RE = re.compile(r"^\d{2}:[0-5]\d:[0-5]\d$")


@dataclass(frozen=True)
class SynthConfig:
    """What the template back-end writes per chunk."""

    kinds: tuple[str, ...] = KINDS
    """Which kinds to write (any of :data:`KINDS`, in any order; a list is accepted)."""
    per_chunk: int = 2
    """``answer`` and ``quiz`` records per chunk each (one key sentence and term apiece, fewer when
    the chunk has fewer distinct key terms); ``extract`` and ``summary`` write one per chunk."""
    seed: int = 0
    """Salt of the phrasing choice."""
    key_points: int = 3
    """Sentences in an ``extract`` list and in a ``summary``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(self.kinds))
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown:
            raise ValueError(f"synth.kinds: {unknown} not in {list(KINDS)}")
        if self.per_chunk < 1 or self.key_points < 2:
            raise ValueError(f"synth: need per_chunk >= 1 and key_points >= 2, got {self.per_chunk}, {self.key_points}")


@dataclass(frozen=True)
class KeyQuestion:
    """A question about a chunk's key term, and the sentence that answers it."""

    question: str
    term: str
    sentence: str
    lang: str


def as_chunk(chunk: Chunk | Mapping[str, Any]) -> Chunk:
    """A Chunk, or a parsed ``chunks.jsonl`` line turned into one."""
    return chunk if isinstance(chunk, Chunk) else Chunk.from_dict(dict(chunk))


def record(instruction: str, context: str, output: str, source: str, kind: str,
           timestamp: str | None, **meta: Any) -> dict[str, Any]:
    """One Alpaca ``sft.jsonl`` record."""
    return {
        "instruction": instruction,
        "input": context,
        "output": output,
        "meta": {"source": source, "timestamp": timestamp, "kind": kind, **meta},
    }


def cite(text: str, stamp: str | None) -> str:
    """``text`` followed by `` [HH:MM:SS]`` when there is a timestamp."""
    return f"{text} [{stamp}]" if stamp else text


def key_questions(chunk: Chunk, seed: int = 0, limit: int | None = None, skip: int = 0,
                  sentences: list[Sentence] | None = None) -> list[KeyQuestion]:
    """Questions about the chunk's key sentences by salience, each on a different key term.

    ``skip`` starts that many sentences down the ranking (quiz items then differ from answers);
    ``sentences``: the chunk's candidate sentences when already computed.
    """
    lang = chunk_language(chunk.lang, chunk.text)
    order = ranked(candidate_sentences(chunk.text) if sentences is None else sentences)
    order = order[skip:] + order[:skip]
    found: list[KeyQuestion] = []
    used: set[str] = set()
    for index, sentence in enumerate(order):
        if limit is not None and len(found) >= limit:
            break
        term = key_term(sentence.text, chunk.text, frozenset(used))
        if term is None:
            continue
        used.add(term.lower())
        shown = term.lower() if term.lower() in chunk.text else term  # "Training" opened a sentence
        question = pick(PHRASES["answer"][lang], seed, chunk.id, "answer", index).format(term=shown)
        found.append(KeyQuestion(question, term, sentence.text, lang))
    return found


def _answers(chunk: Chunk, sentences: list[Sentence], config: SynthConfig, stamp: str | None) -> Iterator[dict[str, Any]]:
    for item in key_questions(chunk, config.seed, config.per_chunk, sentences=sentences):
        yield record(item.question, chunk.text, cite(item.sentence, stamp), chunk.source, "answer", stamp, chunk=chunk.id)


def _quizzes(chunk: Chunk, sentences: list[Sentence], config: SynthConfig, stamp: str | None) -> Iterator[dict[str, Any]]:
    skip = config.per_chunk if "answer" in config.kinds else 0
    lang = chunk_language(chunk.lang, chunk.text)
    for index, item in enumerate(key_questions(chunk, config.seed, config.per_chunk, skip, sentences)):
        cloze = item.sentence.replace(item.term, BLANK, 1)
        instruction = pick(PHRASES["quiz"][lang], config.seed, chunk.id, "quiz", index).format(cloze=cloze)
        yield record(instruction, chunk.text, cite(item.term, stamp), chunk.source, "quiz", stamp, chunk=chunk.id)


def _key_sentences(sentences: list[Sentence], config: SynthConfig, lead: bool) -> list[str]:
    """The top ``key_points`` sentences (with the first one when ``lead``), in text order."""
    chosen = {sentences[0].index} if lead and sentences else set()
    for sentence in ranked(sentences):
        if len(chosen) >= config.key_points:
            break
        chosen.add(sentence.index)
    texts = [s.text for s in sentences if s.index in chosen]
    return list(dict.fromkeys(texts))  # a sentence repeated in the chunk is listed once


def _extract(chunk: Chunk, sentences: list[Sentence], config: SynthConfig, stamp: str | None) -> Iterator[dict[str, Any]]:
    points = _key_sentences(sentences, config, lead=False)
    if len(points) < 2:
        return
    lang = chunk_language(chunk.lang, chunk.text)
    output = "\n".join(f"- {cite(point, stamp)}" for point in points)
    instruction = pick(PHRASES["extract"][lang], config.seed, chunk.id, "extract", 0)
    yield record(instruction, chunk.text, output, chunk.source, "extract", stamp, chunk=chunk.id)


def _summary(chunk: Chunk, sentences: list[Sentence], config: SynthConfig, stamp: str | None) -> Iterator[dict[str, Any]]:
    points = _key_sentences(sentences, config, lead=True)
    if len(points) < 2:
        return
    lang = chunk_language(chunk.lang, chunk.text)
    output = join_sentences(points)
    instruction = pick(PHRASES["summary"][lang], config.seed, chunk.id, "summary", 0)
    yield record(instruction, chunk.text, cite(output, stamp), chunk.source, "summary", stamp, chunk=chunk.id)


_WRITERS = {"answer": _answers, "extract": _extract, "summary": _summary, "quiz": _quizzes}


def synthesize(chunks: Iterable[Chunk | Mapping[str, Any]], config: SynthConfig = SynthConfig()) -> Iterator[dict[str, Any]]:
    """Template SFT records for each chunk, kinds in ``config.kinds`` order (see module docstring).

    A chunk with no usable sentence (a table, a code block, one short line) yields nothing.
    """
    for raw in chunks:
        chunk = as_chunk(raw)
        stamp = seconds_to_hms(chunk.start) if chunk.start is not None else None
        sentences = candidate_sentences(chunk.text)
        for kind in config.kinds:
            yield from _WRITERS[kind](chunk, sentences, config, stamp)


def qa_records(pairs: Iterable[QAPair]) -> Iterator[dict[str, Any]]:
    """One ``answer`` record per real question/answer pair (FAQ, QA log), no context.

    ``meta.timestamp`` is the pair's ``meta["timestamp"]`` when that is ``HH:MM:SS``, else None;
    ``meta.line`` is where the pair starts in its file.
    """
    for pair in pairs:
        stamp = pair.meta.get("timestamp")
        stamp = stamp if isinstance(stamp, str) and _HMS_RE.match(stamp) else None
        yield record(pair.question, "", pair.answer, pair.source, "answer", stamp, line=pair.line)
