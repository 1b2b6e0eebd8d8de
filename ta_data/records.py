"""Records produced by stage 1 ("Read") of ta_data: course text, QA pairs and rejects.

Readers yield :class:`Document` or :class:`QAPair` and append a :class:`Reject` for every
record they could not keep (the ``rejects.jsonl`` contract: ``{file, line, reason, record}``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable, Iterator
from typing import Any

KINDS = ("notes", "transcript", "pdf", "text")
"""Allowed values of :attr:`Document.kind`."""


@dataclass(frozen=True)
class Document:
    """One unit of course text: a markdown section, a text paragraph, a PDF page or a cue.

    ``chapter`` is the heading path joined with " > " (markdown only, else None).
    ``start``/``end`` are seconds from the start of the recording (transcripts only, else None).
    ``meta`` carries where the text came from inside the file (``line``, ``page``, ``cue``...).
    """

    text: str
    source: str
    chapter: str | None
    start: float | None
    end: float | None
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Document.kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class QAPair:
    """One question and its answer from an FAQ or a QA log; ``line`` is 1-based, where it starts."""

    question: str
    answer: str
    source: str
    line: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """A record that was not kept, with why. ``line`` is 1-based, or None for a whole file."""

    file: str
    line: int | None
    reason: str
    record: object = None

    def to_json(self) -> str:
        """One ``rejects.jsonl`` line; values JSON cannot hold (bytes, paths) become strings."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, default=str)


def json_lines(lines: Iterable[str], source: str, rejects: list[Reject]) -> Iterator[tuple[int, Any]]:
    """(1-based line, parsed value) for every non-blank line; a line that is not JSON is a Reject."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(source, number, f"invalid JSON: {exc.msg} at column {exc.colno}", raw.rstrip("\n")))
