"""Stage 8 of ta_data ("Refusals"): questions the context cannot answer, answered with a refusal.

Two sources, half each (the odd one goes to off-course):

- off-course questions (from open data or the course's own out-of-scope list), each asked with a
  chunk drawn at random as context;
- mismatches: a question the template synthesizer writes about chunk A (ta_data.synth.key_questions)
  asked with chunk B as context, where B has another (source, chapter) and the same language (a
  course's en and zh notes say the same things), does not contain A's key sentence and does not
  even mention A's key term, so B cannot answer it.

The output is the refusal in the question's language (:data:`REFUSAL_ZH` / :data:`REFUSAL_EN`),
kind ``refusal``, ``meta = {source, timestamp: None, kind, chunk, origin}`` where source and chunk
are the context chunk's and origin is "off_course" or "mismatch". The count makes refusals
``share`` of the final course set: ``round(share * n_course / (1 - share))``. When one source
cannot be made (no off-course questions; one chapter only; no B that avoids the term) the other
fills in; the list is shorter only when neither can. Same arguments, same list.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ta_data.chunk import Chunk
from ta_data.synth import KeyQuestion, as_chunk, key_questions, record
from ta_data.synth_text import chunk_language

REFUSAL_ZH = "根据提供的课程资料无法回答这个问题。"
REFUSAL_EN = "I don't know based on the course material."
MISMATCH_TRIES = 20
"""Random B chunks tried per mismatch before giving up on that one."""


def refusal_count(n_course: int, share: float) -> int:
    """Refusals to add to ``n_course`` course records so they are ``share`` of the total."""
    if not 0 <= share < 1:
        raise ValueError(f"refusals.share={share}: expected 0 <= share < 1")
    if n_course < 0:
        raise ValueError(f"refusals: n_course={n_course} is negative")
    return round(share * n_course / (1 - share))


def refusal_text(question: str) -> str:
    """The refusal in ``question``'s language: zh when its Chinese characters at least match its Latin
    words, else en. Script counts only (not the optional lingua), so the output is the same on every
    machine."""
    return REFUSAL_ZH if chunk_language("mixed", question) == "zh" else REFUSAL_EN


def _refusal(question: str, context: Chunk, origin: str) -> dict[str, Any]:
    return record(question, context.text, refusal_text(question), context.source, "refusal", None,
                  chunk=context.id, origin=origin)


def _can_answer(context: Chunk, item: KeyQuestion) -> bool:
    """True when ``context`` might answer ``item``: it holds the key sentence or names the term."""
    text = context.text.lower()
    return item.sentence.lower() in text or item.term.lower() in text


def _mismatches(chunks: Sequence[Chunk], count: int, rng: random.Random, seed: int) -> list[dict[str, Any]]:
    """Up to ``count`` questions about one chunk asked with another chunk as context."""
    if len({(c.source, c.chapter) for c in chunks}) < 2:
        return []
    questions: dict[int, list[KeyQuestion]] = {}
    made: list[dict[str, Any]] = []
    used: set[tuple[int, str]] = set()
    for _ in range(count * MISMATCH_TRIES):
        if len(made) >= count:
            break
        a = rng.randrange(len(chunks))
        if a not in questions:
            questions[a] = key_questions(chunks[a], seed, limit=3)
        if not questions[a]:
            continue
        item = questions[a][rng.randrange(len(questions[a]))]
        b = rng.randrange(len(chunks))
        context = chunks[b]
        same_place = (context.source, context.chapter) == (chunks[a].source, chunks[a].chapter)
        other_lang = chunk_language(context.lang, context.text) != item.lang  # notes_en vs notes_zh
        if same_place or other_lang or _can_answer(context, item) or (a, item.question) in used:
            continue
        used.add((a, item.question))
        made.append(_refusal(item.question, context, "mismatch"))
    return made


def _off_course(chunks: Sequence[Chunk], questions: list[str], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """``count`` off-course questions (shuffled, reused in turn when too few), random contexts."""
    if not questions:
        return []
    order = list(questions)
    rng.shuffle(order)
    return [_refusal(order[i % len(order)], chunks[rng.randrange(len(chunks))], "off_course") for i in range(count)]


def make_refusals(
    chunks: Sequence[Chunk | Mapping[str, Any]],
    off_course: Sequence[str],
    share: float = 0.1,
    seed: int = 0,
    n_course: int | None = None,
) -> list[dict[str, Any]]:
    """Refusal records, ``share`` of the final course set (see the module docstring).

    ``n_course`` is the number of course SFT records the refusals join (None: one per chunk).
    Raises ValueError when refusals are due but there is no chunk to use as context.
    """
    items = [as_chunk(chunk) for chunk in chunks]
    count = refusal_count(len(items) if n_course is None else n_course, share)
    if count == 0:
        return []
    if not items:
        raise ValueError("refusals: no chunks to use as context")
    questions = [q.strip() for q in off_course if q and q.strip()]
    rng = random.Random(seed)
    wanted = count // 2 if questions else count
    mismatches = _mismatches(items, wanted, rng, seed)
    off = _off_course(items, questions, count - len(mismatches), rng)
    return off + mismatches
