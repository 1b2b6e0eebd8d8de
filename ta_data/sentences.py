"""Sentence and clause splitting for zh and en text, used by the chunk and synth stages.

A split never loses a character: every piece is ``(offset, sep, text)`` where ``sep`` is the
whitespace between the previous piece and this one, so ``"".join(sep + text)`` rebuilds the
input (apart from leading and trailing whitespace). Sentences end at 。！？；!? (and … / ……; the ASCII ";" joins clauses),
at "." followed by whitespace (not in "3.14", "e.g." or "Dr."), at a blank line, and at a line
break before a markdown heading, list item, quote, table row or code fence. Closing quotes and
brackets stay with the sentence they close (“好。” / "Yes.").
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

_CLOSERS = "”’\"')）】》」』\\]"
# Ends that cut anywhere (full-width, and ! ? ; which never sit inside a number), then "." / "…"
# which cut only before whitespace or the end of the text.
_END_RE = re.compile(
    rf"(?:[。！？；]+|[!?]+(?=[\s{_CLOSERS}]|$)|…+|\.{{3}}(?=\s|$)|\.(?=[{_CLOSERS}]*(?:\s|$)))[{_CLOSERS}]*"
)
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n\s*")
_STRUCTURE_RE = re.compile(r"\n(?=[ \t]*(?:#{1,6}\s|[-*+•]\s|\d+[.)]\s|>|\||```|~~~))")
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al dr mr mrs ms prof fig figs eq eqs no sec ch approx resp".split()
)
_ABBREV_RE = re.compile(r"(?:^|[\s(])([A-Za-z](?:\.[A-Za-z])*|[A-Za-z]+)\.$")
_CLAUSE_RE = re.compile(r"[，、：,:—]+[”’\"')）]*")
_SPACE_RE = re.compile(r"\s+")


class Piece(NamedTuple):
    """A sentence (or clause) of a text: where it starts, the whitespace before it, its text."""

    offset: int
    sep: str
    text: str


def _is_abbreviation(text: str, dot: int) -> bool:
    """True when the "." at ``dot`` ends an abbreviation ("e.g.", "Dr.") or an initial ("J.", not
    the "b." of "w * x + b.")."""
    match = _ABBREV_RE.search(text[max(0, dot - 12) : dot + 1])
    if match is None:
        return False
    word = match.group(1)
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()) or "." in word


def _cuts(text: str) -> list[int]:
    """Sorted positions where a new sentence may start (0 and len(text) included)."""
    cuts = {0, len(text)}
    for match in _END_RE.finditer(text):
        if match.group(0).startswith(".") and match.group(0)[:3] != "..." and _is_abbreviation(
            text, match.start()
        ):
            continue
        cuts.add(match.end())
    cuts.update(match.start() for match in _BLANK_LINE_RE.finditer(text))
    cuts.update(match.start() for match in _STRUCTURE_RE.finditer(text))
    return sorted(cuts)


def _pieces(text: str, cuts: list[int]) -> list[Piece]:
    """Cut ``text`` at ``cuts``; whitespace between two pieces becomes the later one's ``sep``."""
    spans: list[tuple[int, int]] = []
    for begin, end in zip(cuts, cuts[1:]):
        chunk = text[begin:end]
        body = chunk.strip()
        if body:
            start = begin + len(chunk) - len(chunk.lstrip())
            spans.append((start, start + len(body)))
    return [
        Piece(start, text[spans[i - 1][1] : start] if i else "", text[start:end])
        for i, (start, end) in enumerate(spans)
    ]


def split_sentences(text: str) -> list[Piece]:
    """The sentences of ``text`` (see the module docstring for where they end)."""
    return _pieces(text, _cuts(text))


def split_long(text: str, max_tokens: int, count: Callable[[str], int]) -> list[Piece]:
    """Cut one over-long sentence into pieces of at most ``max_tokens`` (by ``count``).

    Clause ends (，、：, : —) first, then whitespace between words, then single characters; each
    level only inside a part the level above could not bring under the limit. Adjacent parts are
    packed greedily, so pieces are as long as the limit allows. Offsets are relative to ``text``.
    """
    parts = _split_at(text, 0, max_tokens, count, level=0)
    packed: list[Piece] = []
    for part in parts:
        if packed:
            last = packed[-1]
            merged = last.text + part.sep + part.text
            if count(merged) <= max_tokens:
                packed[-1] = Piece(last.offset, last.sep, merged)
                continue
        packed.append(part if packed else Piece(part.offset, "", part.text))
    return packed


def _split_at(text: str, base: int, max_tokens: int, count: Callable[[str], int], level: int) -> list[Piece]:
    """Pieces of ``text`` (starting at ``base``) at clause, word, then character boundaries."""
    if count(text) <= max_tokens or len(text) <= 1:
        return [Piece(base, "", text)]
    if level == 0:
        cuts = sorted({0, len(text), *(m.end() for m in _CLAUSE_RE.finditer(text))})
    elif level == 1:
        cuts = sorted({0, len(text), *(m.start() for m in _SPACE_RE.finditer(text))})
    else:
        cuts = list(range(len(text) + 1))
    pieces = _pieces(text, cuts)
    if len(pieces) <= 1 and level < 2:
        return _split_at(text, base, max_tokens, count, level + 1)
    out: list[Piece] = []
    for piece in pieces:
        sub = _split_at(piece.text, base + piece.offset, max_tokens, count, min(level + 1, 2))
        out.append(Piece(sub[0].offset, piece.sep, sub[0].text))
        out.extend(sub[1:])
    return out
