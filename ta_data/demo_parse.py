"""Parsers for the built-in demo course files.

Reads the hand-written course material in :mod:`ta_data.demo`'s ``COURSE_DIR``:
SRT lecture transcripts (:func:`parse_srt`, grouped into windows by
:func:`group_cues`), ``Q:``/``A:`` files (:func:`parse_faq`), ``User:``/``Assistant:``
dialogues (:func:`parse_dialogues`) and Markdown lecture notes with fenced
``keypoints``/``summary`` blocks (:func:`parse_notes`).  Every parser raises
``ValueError`` naming the file and 1-based line on bad input.  Small text helpers
(:func:`seconds_to_hms`, :func:`count_cjk`, :func:`count_words`, :func:`is_chinese`)
live here too.

Only the standard library is used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CUE_GAP_SECONDS = 5.0
MIN_WINDOW_CUES = 3
MAX_WINDOW_CUES = 5

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN_WORD_RE = re.compile(r"[A-Za-z]+")
_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)[,.](\d{3})"
_SRT_TIMING_RE = re.compile(rf"^{_SRT_TIME}\s+-->\s+{_SRT_TIME}$")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_FENCE_RE = re.compile(r"^```\s*([\w-]*)\s*$")
_SPECIAL_BLOCKS = ("keypoints", "summary")


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: 1-based ``index``, ``start``/``end`` in seconds, ``text``."""

    index: int
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Section:
    """A ``##`` section of lecture notes with its hand-written key points and summary."""

    path: tuple[str, ...]
    body: str
    keypoints: tuple[str, ...]
    summary: str
    line: int


# --------------------------------------------------------------------------- helpers


def _error(source: str, line: int, message: str) -> ValueError:
    """Build a ``ValueError`` that names the file and 1-based line number."""
    return ValueError(f"{source}:{line}: {message}")


def _lines(text: str) -> list[str]:
    """Split text into lines (any newline style, BOM removed) keeping line numbers exact."""
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def seconds_to_hms(seconds: float) -> str:
    """Format a non-negative number of seconds as ``HH:MM:SS`` (fractions are dropped)."""
    if seconds < 0:
        raise ValueError(f"seconds must be non-negative, got {seconds}")
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def count_cjk(text: str) -> int:
    """Number of CJK ideographs in ``text``."""
    return len(_CJK_RE.findall(text))


def count_words(text: str) -> int:
    """Number of whitespace-separated words once CJK ideographs are removed."""
    return len(_CJK_RE.sub(" ", text).split())


def is_chinese(text: str) -> bool:
    """True when CJK ideographs outnumber Latin words (mostly-Chinese text)."""
    return count_cjk(text) > len(_LATIN_WORD_RE.findall(text))


# --------------------------------------------------------------------------- SRT


def _parse_srt_time(groups: Sequence[str]) -> float:
    """Convert regex groups (hours, minutes, seconds, millis) into seconds."""
    hours, minutes, secs, millis = (int(g) for g in groups)
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Group non-blank lines into blank-line separated blocks with their first line number."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                first = number
            current.append(line.strip())
        elif current:
            blocks.append((first, current))
            current = []
    if current:
        blocks.append((first, current))
    return blocks


def _parse_cue(first: int, block: list[str], source: str) -> Cue:
    """Parse one SRT block starting at line ``first``."""
    if not block[0].isdigit():
        raise _error(source, first, f"expected a cue number, got {block[0]!r}")
    index = int(block[0])
    if len(block) < 2:
        raise _error(source, first, f"cue {index} has no timing line")
    match = _SRT_TIMING_RE.match(block[1])
    if match is None:
        raise _error(
            source,
            first + 1,
            f"malformed timing line {block[1]!r} (expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm')",
        )
    start = _parse_srt_time(match.groups()[:4])
    end = _parse_srt_time(match.groups()[4:])
    if end <= start:
        raise _error(source, first + 1, f"cue {index} ends ({block[1]}) before it starts")
    if len(block) < 3:
        raise _error(source, first, f"cue {index} has no text")
    return Cue(index=index, start=start, end=end, text=" ".join(block[2:]))


def parse_srt(text: str, source: str) -> list[Cue]:
    """Parse SRT ``text``; raise ``ValueError`` naming ``source`` and the line on bad input.

    Cue numbers must increase and cue start times must not go backwards.
    """
    cues: list[Cue] = []
    for first, block in _blocks(_lines(text)):
        cue = _parse_cue(first, block, source)
        if cues and cue.index <= cues[-1].index:
            raise _error(
                source,
                first,
                f"cue number {cue.index} does not increase (previous {cues[-1].index})",
            )
        if cues and cue.start < cues[-1].start:
            raise _error(source, first + 1, f"cue {cue.index} starts before the previous cue")
        cues.append(cue)
    if not cues:
        raise _error(source, 1, "no subtitle cues found")
    return cues


def _is_boundary(previous: Cue, cue: Cue) -> bool:
    """True at a natural break: a pause of >= 5 s or a switch between Chinese and English."""
    pause = cue.start - previous.end >= CUE_GAP_SECONDS
    return pause or is_chinese(cue.text) != is_chinese(previous.text)


def group_cues(cues: Sequence[Cue]) -> list[list[Cue]]:
    """Group cues into windows of 3-5 cues, preferring to break at natural boundaries.

    A trailing window shorter than the minimum is merged into the previous one.
    """
    windows: list[list[Cue]] = []
    for cue in cues:
        current = windows[-1] if windows else []
        starts_new = (
            not current
            or len(current) >= MAX_WINDOW_CUES
            or (len(current) >= MIN_WINDOW_CUES and _is_boundary(current[-1], cue))
        )
        if starts_new:
            windows.append([cue])
        else:
            current.append(cue)
    if len(windows) > 1 and len(windows[-1]) < MIN_WINDOW_CUES:
        windows[-2].extend(windows.pop())
    return windows


# --------------------------------------------------------------------------- Q/A files


def parse_faq(text: str, source: str) -> list[tuple[str, str]]:
    """Parse ``Q: ...`` / ``A: ...`` pairs; raise ``ValueError`` naming ``source`` and line.

    Lines starting with ``#`` and blank lines are ignored; a non-blank line right after
    a ``Q:`` or ``A:`` line continues it.
    """
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    answer: str | None = None
    question_line = 0
    field: str | None = None
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if line.startswith("Q:"):
            if question is not None:
                if answer is None:
                    raise _error(
                        source, question_line, "question has no answer (missing 'A:' line)"
                    )
                pairs.append((question, answer))
            question, answer, question_line, field = line[2:].strip(), None, number, "q"
            if not question:
                raise _error(source, number, "empty question after 'Q:'")
        elif line.startswith("A:"):
            if question is None or answer is not None:
                raise _error(source, number, "'A:' line without a preceding 'Q:' line")
            answer, field = line[2:].strip(), "a"
            if not answer:
                raise _error(source, number, "empty answer after 'A:'")
        elif not line or line.startswith("#"):
            field = None
        elif field == "q" and question is not None:
            question = f"{question} {line}"
        elif field == "a" and answer is not None:
            answer = f"{answer} {line}"
        else:
            raise _error(source, number, f"unexpected text outside a Q:/A: pair: {line!r}")
    if question is not None:
        if answer is None:
            raise _error(source, question_line, "question has no answer (missing 'A:' line)")
        pairs.append((question, answer))
    if not pairs:
        raise _error(source, 1, "no 'Q:'/'A:' pairs found")
    return pairs


def parse_dialogues(text: str, source: str) -> list[list[tuple[str, str]]]:
    """Parse ``## ...`` dialogues made of ``User:`` / ``Assistant:`` lines.

    Each dialogue must alternate user/assistant, start with the user and end with the
    assistant; otherwise a ``ValueError`` names ``source`` and the line.
    """
    prefixes = {"User:": "user", "Assistant:": "assistant"}
    dialogues: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] | None = None
    header_line = 0
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if line.startswith("## "):
            _check_dialogue_end(current, source, header_line)
            current, header_line = [], number
            dialogues.append(current)
            continue
        if not line or line.startswith("#"):
            continue
        prefix = next((p for p in prefixes if line.startswith(p)), None)
        if prefix is None or current is None:
            raise _error(
                source, number, f"expected 'User:' or 'Assistant:' inside a '##' dialogue: {line!r}"
            )
        role = prefixes[prefix]
        expected = "user" if not current or current[-1][0] == "assistant" else "assistant"
        content = line[len(prefix) :].strip()
        if role != expected or not content:
            raise _error(source, number, f"expected a non-empty {expected} turn")
        current.append((role, content))
    _check_dialogue_end(current, source, header_line)
    if not dialogues:
        raise _error(source, 1, "no '##' dialogues found")
    return dialogues


def _check_dialogue_end(turns: list[tuple[str, str]] | None, source: str, line: int) -> None:
    """Raise if a finished dialogue is empty or does not end with the assistant."""
    if turns is not None and (not turns or turns[-1][0] != "assistant"):
        raise _error(source, line, "dialogue must end with an 'Assistant:' turn")


# --------------------------------------------------------------------------- notes


@dataclass
class _SectionDraft:
    """Mutable state while reading one ``##`` section."""

    path: tuple[str, ...]
    line: int
    body: list[str]
    blocks: dict[str, list[str]]


def _finish_section(draft: _SectionDraft, source: str) -> Section:
    """Validate a section draft and freeze it."""
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(draft.body)).strip()
    if not body:
        raise _error(source, draft.line, f"section {draft.path[-1]!r} has no text")
    for name in _SPECIAL_BLOCKS:
        if name not in draft.blocks:
            raise _error(source, draft.line, f"section {draft.path[-1]!r} has no ```{name} block")
    keypoints = _parse_bullets(draft.blocks["keypoints"])
    if not 2 <= len(keypoints) <= 4:
        raise _error(
            source,
            draft.line,
            f"section {draft.path[-1]!r} needs 2-4 key points, got {len(keypoints)}",
        )
    summary = " ".join(draft.blocks["summary"]).strip()
    if not summary:
        raise _error(source, draft.line, f"section {draft.path[-1]!r} has an empty summary")
    return Section(draft.path, body, tuple(keypoints), summary, draft.line)


def _parse_bullets(lines: list[str]) -> list[str]:
    """Turn ``- item`` lines (with optional continuation lines) into items."""
    items: list[str] = []
    for line in lines:
        if line.startswith("- "):
            items.append(line[2:].strip())
        elif line and items:
            items[-1] = f"{items[-1]} {line}"
    return items


def parse_notes(text: str, source: str) -> list[Section]:
    """Parse lecture notes into ``##`` sections (heading path = ``#`` title + ``##`` title).

    Each section must contain a fenced ``keypoints`` block (2-4 ``- `` bullets) and a
    fenced ``summary`` block; those blocks are excluded from the section body.
    Other fenced blocks and deeper headings stay in the body.
    """
    sections: list[Section] = []
    title: str | None = None
    draft: _SectionDraft | None = None
    fence: tuple[str, int] | None = None  # (block name, opening line)
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.rstrip()
        if fence is not None:
            if line.strip() == "```":
                if fence[0] not in _SPECIAL_BLOCKS and draft is not None:
                    draft.body.append(line)  # closing an ordinary code block
                fence = None
                continue
            _append_fenced(draft, fence[0], line)
            continue
        fence_match = _FENCE_RE.match(line.strip())
        if fence_match:
            fence = _open_fence(fence_match.group(1), draft, source, number, line)
            continue
        heading = _HEADING_RE.match(line)
        if heading and len(heading.group(1)) <= 2:
            if draft is not None:
                sections.append(_finish_section(draft, source))
                draft = None
            if len(heading.group(1)) == 1:
                title = heading.group(2)
            else:
                path = (title, heading.group(2)) if title else (heading.group(2),)
                draft = _SectionDraft(path, number, [], {})
        elif draft is not None:
            draft.body.append(line)
    if fence is not None:
        raise _error(source, fence[1], f"```{fence[0]} block is never closed")
    if draft is not None:
        sections.append(_finish_section(draft, source))
    if not sections:
        raise _error(source, 1, "no '##' sections found")
    return sections


def _open_fence(
    name: str, draft: _SectionDraft | None, source: str, number: int, line: str
) -> tuple[str, int]:
    """Start a fenced block, checking that special blocks sit inside a section once."""
    if name in _SPECIAL_BLOCKS:
        if draft is None:
            raise _error(source, number, f"```{name} block outside a '##' section")
        if name in draft.blocks:
            raise _error(source, number, f"second ```{name} block in section {draft.path[-1]!r}")
        draft.blocks[name] = []
    elif draft is not None:
        draft.body.append(line)
    return (name, number)


def _append_fenced(draft: _SectionDraft | None, name: str, line: str) -> None:
    """Add a line inside a fenced block to the right place."""
    if draft is None:
        return
    if name in _SPECIAL_BLOCKS:
        draft.blocks[name].append(line.strip())
    else:
        draft.body.append(line)
