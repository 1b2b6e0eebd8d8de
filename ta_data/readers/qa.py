"""Read FAQ files and QA logs into QAPairs: JSON Lines, CSV, and markdown/text ``Q:``/``A:``.

Field names: question/answer, q/a or instruction/output (Alpaca; a non-empty ``input`` is
appended to the question). Anything else on a record goes to ``meta`` (a ``meta`` dict
field is merged into it). Every record that
is not kept becomes a Reject with its 1-based line.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ta_data.readers.course import read_lines, source_name
from ta_data.records import QAPair, Reject, json_lines

FIELD_NAMES = (("question", "answer"), ("q", "a"), ("instruction", "output"))
"""Accepted (question, answer) field or column names, in order of preference."""

_MARKER_RE = re.compile(  # "Q: ...", "- **Q:** ...", "**A**: ...", "问：...", "答案: ..."
    r"^\s*(?:[-*+]\s+)?(?:\*\*)?(Question|问题|Q|问|Answer|答案|A|答)(?:\*\*)?\s*[:：]"
    r"(?:\*\*)?\s*(.*)$"
)
_QUESTION_MARKERS = ("Question", "问题", "Q", "问")
_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")


def read_qa(path: str | Path, rejects: list[Reject]) -> Iterator[QAPair]:
    """QA pairs from a ``.jsonl``, ``.csv``, ``.md`` or ``.txt`` file (by extension)."""
    suffix = Path(path).suffix.lower()
    parser = _PARSERS.get(suffix)
    if parser is None:
        rejects.append(Reject(source_name(Path(path)), None, "unsupported file type", None))
        return
    lines = read_lines(path, rejects)
    if lines is not None:
        yield from parser(lines, source_name(Path(path)), rejects)


def _pair_from_fields(record: dict[str, object]) -> tuple[str, str, dict[str, object]] | None:
    """(question, answer, other fields) from a record, or None if no accepted field pair fits."""
    for q_key, a_key in FIELD_NAMES:
        question, answer = record.get(q_key), record.get(a_key)
        if isinstance(question, str) and isinstance(answer, str) and question.strip():
            used = {q_key, a_key}
            extra = record.get("input") if q_key == "instruction" else None
            if isinstance(extra, str) and extra.strip():
                question, used = f"{question.strip()}\n{extra.strip()}", used | {"input"}
            meta = {key: value for key, value in record.items() if key not in used}
            nested = meta.pop("meta", None)
            if isinstance(nested, dict):  # a record's own meta dict is merged, not nested
                meta = {**nested, **meta}
            elif nested is not None:
                meta["meta"] = nested
            return question.strip(), answer.strip(), meta
    return None


def _checked_pair(
    record: dict[str, object], source: str, line: int, rejects: list[Reject]
) -> QAPair | None:
    """A QAPair from one JSON/CSV record, or None after appending the Reject saying why."""
    fields = _pair_from_fields(record)
    if fields is None:
        names = ", ".join(f"{q}/{a}" for q, a in FIELD_NAMES)
        rejects.append(Reject(source, line, f"no non-empty text fields {names}", record))
        return None
    question, answer, meta = fields
    if not answer:
        rejects.append(Reject(source, line, "empty answer", record))
        return None
    return QAPair(question, answer, source, line, meta)


def _jsonl_pairs(lines: list[str], source: str, rejects: list[Reject]) -> Iterator[QAPair]:
    """One pair per non-blank JSON object line."""
    for number, record in json_lines(lines, source, rejects):
        if not isinstance(record, dict):
            rejects.append(Reject(source, number, "not a JSON object", record))
            continue
        pair = _checked_pair(record, source, number, rejects)
        if pair is not None:
            yield pair


def _csv_pairs(lines: list[str], source: str, rejects: list[Reject]) -> Iterator[QAPair]:
    """One pair per CSV row; ``line`` is where the row starts (quoted fields may span lines).

    Column names are lower-cased, so "Question" and "question" both work; ``meta`` keys too.
    """
    reader = csv.reader(io.StringIO("\n".join(lines), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
    except csv.Error as exc:
        rejects.append(Reject(source, None, f"unreadable CSV header: {exc}", None))
        return
    if not any(q in header and a in header for q, a in FIELD_NAMES):
        rejects.append(Reject(source, None, "CSV header has no question/answer columns", header))
        return
    first = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            rejects.append(Reject(source, first, f"malformed CSV row: {exc}", None))
            return  # the csv module cannot resynchronise after a broken quote
        if row and any(cell.strip() for cell in row):
            yield from _csv_row(header, row, source, first, rejects)
        first = reader.line_num + 1


def _csv_row(
    header: list[str], row: list[str], source: str, line: int, rejects: list[Reject]
) -> Iterator[QAPair]:
    """The pair for one CSV row, or a Reject when its cell count does not match the header."""
    if len(row) != len(header):
        reason = f"expected {len(header)} columns, got {len(row)}"
        rejects.append(Reject(source, line, reason, row))
        return
    pair = _checked_pair(dict(zip(header, row)), source, line, rejects)
    if pair is not None:
        yield pair


@dataclass
class _Draft:
    """A ``Q:``/``A:`` pair being read; ``answer`` is None until its ``A:`` line."""

    line: int
    question: list[str] | None
    answer: list[str] | None = None
    answer_line: int = 0
    meta: dict[str, object] = field(default_factory=dict)


def _marked_pairs(lines: list[str], source: str, rejects: list[Reject]) -> Iterator[QAPair]:
    """Pairs from ``Q:``/``A:`` (or ``问：``/``答：``) lines; an answer runs to the next Q.

    Markdown headings outside code blocks end the current pair and become ``meta["chapter"]``.
    A question without an answer, an answer without a question and text outside any pair
    are Rejects with their line.
    """
    draft: _Draft | None = None
    headings: list[tuple[int, str]] = []
    fence = False
    for number, raw in enumerate(lines, start=1):
        marker = None if fence else _MARKER_RE.match(raw)
        heading = None if fence else _HEADING_RE.match(raw)
        fence = fence != bool(_FENCE_RE.match(raw))
        if marker is None and heading is None:
            _continue_draft(draft, raw, source, number, rejects)
            continue
        if marker is not None and _answers(draft, marker.group(1)):
            draft.answer, draft.answer_line = [marker.group(2)], number
            continue
        yield from _finish(draft, source, rejects)
        draft = None
        if heading is not None:
            level = len(heading.group(1))
            headings = [h for h in headings if h[0] < level] + [(level, heading.group(2))]
            continue
        chapter = {"chapter": " > ".join(h[1] for h in headings)} if headings else {}
        if marker.group(1) in _QUESTION_MARKERS:
            draft = _Draft(number, [marker.group(2)], meta=chapter)
        else:
            draft = _Draft(number, None, [marker.group(2)], number, chapter)
    yield from _finish(draft, source, rejects)


def _answers(draft: _Draft | None, name: str) -> bool:
    """True when an answer marker ``name`` answers the open question of ``draft``."""
    return (
        name not in _QUESTION_MARKERS
        and draft is not None
        and draft.question is not None
        and draft.answer is None
    )


def _continue_draft(
    draft: _Draft | None, raw: str, source: str, number: int, rejects: list[Reject]
) -> None:
    """Add a plain line to the open question or answer; stray text is a Reject."""
    if draft is None:
        if raw.strip():
            rejects.append(Reject(source, number, "text outside a Q:/A: pair", raw))
    elif draft.answer is not None:
        draft.answer.append(raw)
    elif draft.question is not None:
        draft.question.append(raw)


def _finish(draft: _Draft | None, source: str, rejects: list[Reject]) -> Iterator[QAPair]:
    """The finished pair, or a Reject for a half pair."""
    if draft is None:
        return
    question = "\n".join(draft.question or []).strip()
    answer = "\n".join(line.rstrip() for line in draft.answer or []).strip()
    answer = re.sub(r"\n{3,}", "\n\n", answer)
    if draft.question is None:
        rejects.append(Reject(source, draft.answer_line, "answer without a question", answer))
    elif draft.answer is None:
        rejects.append(Reject(source, draft.line, "question without an answer", question))
    elif not question or not answer:
        reason = "empty question" if not question else "empty answer"
        rejects.append(Reject(source, draft.line, reason, {"question": question, "answer": answer}))
    else:
        yield QAPair(question, answer, source, draft.line, draft.meta)


_PARSERS = {".jsonl": _jsonl_pairs, ".csv": _csv_pairs, ".md": _marked_pairs, ".txt": _marked_pairs}
"""QA parser per lower-case file extension."""
