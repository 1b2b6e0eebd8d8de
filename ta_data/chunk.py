"""Stage 6 of ta_data ("Chunk"): Documents -> ``chunks.jsonl`` records of min..max tokens.

Consecutive Documents of one source and chapter (the sections of a markdown heading, the
paragraphs of a text file, the pages of a PDF, the cues of a transcript) form a group; a group
is cut into units (sentences of notes/text/PDF, whole cues of a transcript; see
:mod:`ta_data.sentences`) and the units are packed greedily up to ``max_tokens``. The next
chunk repeats the last whole units of the previous one, up to ``overlap_tokens``. A group's
last chunk under ``min_tokens`` is merged into the previous chunk when both fit under
``max_tokens``, else the two are re-cut at the unit that balances them. Only a sentence (or
cue) longer than ``max_tokens`` alone is cut inside, at clause, word, then character bounds.
A group smaller than ``min_tokens`` is one chunk: chunks never cross a chapter or a source.

Streams: one group's units and one finished chunk are held at a time.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any

from ta_data.quality import detect_language, is_cjk
from ta_data.records import Document
from ta_data.sentences import split_long, split_sentences
from ta_data.tokens import token_counter


@dataclass(frozen=True)
class Chunk:
    """One ``chunks.jsonl`` record. ``start``/``end`` are seconds (transcripts only, else None);
    ``lang`` is "zh" | "en" | "mixed" | "unknown" (ta_data.quality.detect_language);
    ``n_tokens`` counts ``text`` with the configured tokenizer or the estimate."""

    id: str
    text: str
    source: str
    chapter: str | None
    start: float | None
    end: float | None
    lang: str
    n_tokens: int

    def to_json(self) -> str:
        """One ``chunks.jsonl`` line (sorted keys, UTF-8 kept)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        """A Chunk from a parsed ``chunks.jsonl`` line; a missing field is a KeyError naming it."""
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise KeyError(f"chunk record lacks field(s) {missing}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ChunkConfig:
    """How stage 6 cuts text; sizes are tokens of ``tokenizer`` (or the estimate)."""

    min_tokens: int = 300
    """A chunk smaller than this is merged or re-balanced with its neighbour (within a group)."""
    max_tokens: int = 800
    """No chunk is longer, unless the tokenizer counts a join differently from its parts (+-1)."""
    overlap_tokens: int = 50
    """Whole sentences/cues from the end of a chunk repeated at the start of the next, at most
    this many tokens (0: no overlap; a last sentence longer than this is not repeated)."""
    tokenizer: str | None = None
    """A HF tokenizer folder (or its tokenizer.json) to count with; None: the fast estimate
    (calibrated on SmolLM2, see ta_data.tokens)."""

    def __post_init__(self) -> None:
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError(f"chunk: need 0 < min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.min_tokens:
            raise ValueError(f"chunk: need 0 <= overlap_tokens < min_tokens, got {self.overlap_tokens}")


@dataclass(frozen=True)
class _Unit:
    """A sentence or cue: its text, the separator before it, tokens (separator included), times,
    and its character offset in the group (documents' texts laid end to end)."""

    text: str
    sep: str
    tokens: int
    start: float | None
    end: float | None
    offset: int


def _join_sep(previous: str, text: str, transcript: bool) -> str:
    """Separator between two Documents of a group: cues join like subtitle lines, else a blank line."""
    if not transcript:
        return "\n\n"
    return "" if previous and is_cjk(previous[-1]) and is_cjk(text[0]) else " "


def _units(docs: Iterable[Document], transcript: bool, config: ChunkConfig, count: Callable[[str], int]) -> Iterator[_Unit]:
    """The units of one group, in order."""
    offset, last = 0, ""
    for doc in docs:
        text = doc.text.strip()
        if not text:
            continue
        doc_sep = _join_sep(last, text, transcript) if last else ""
        pieces = [(0, "", text)] if transcript else split_sentences(text)
        for index, (at, sep, piece) in enumerate(pieces):
            sep = doc_sep if index == 0 else sep
            tokens = count(sep + piece)  # the separator's own tokens ("\n\n") count
            if tokens <= config.max_tokens or count(piece) <= config.max_tokens:
                yield _Unit(piece, sep, tokens, doc.start, doc.end, offset + at)
                continue
            for i, part in enumerate(split_long(piece, config.max_tokens, count)):
                part_sep = sep if i == 0 else part.sep
                yield _Unit(part.text, part_sep, count(part_sep + part.text), doc.start, doc.end, offset + at + part.offset)
        offset += len(text) + 2
        last = text


def _size(units: list[_Unit]) -> int:
    """Tokens of units joined (the first unit's separator is not part of the chunk)."""
    return sum(unit.tokens for unit in units)


def _overlap(units: list[_Unit], budget: int) -> list[_Unit]:
    """The longest tail of ``units`` whose size fits ``budget`` (whole units only)."""
    tail: list[_Unit] = []
    for unit in reversed(units):
        if _size(tail) + unit.tokens > budget:
            break
        tail.insert(0, unit)
    return tail


def _pack(units: Iterable[_Unit], config: ChunkConfig) -> Iterator[list[_Unit]]:
    """Greedy packing with overlap; the last two chunks of the group are balanced (see module)."""
    pending: list[_Unit] | None = None  # the previous full chunk, held back for the balancing
    current: list[_Unit] = []
    fresh = 0  # units of ``current`` that are not overlap
    for unit in units:
        if fresh and _size(current) + unit.tokens > config.max_tokens:
            if pending is not None:
                yield pending
            pending = current
            current = _overlap(current, min(config.overlap_tokens, config.max_tokens - unit.tokens))
            fresh = 0
        current.append(unit)
        fresh += 1
    if pending is None:
        if current:
            yield current
        return
    if _size(current) >= config.min_tokens:
        yield pending
        yield current
        return
    yield from _balance(pending, current[len(current) - fresh :], config)


def _balance(first: list[_Unit], rest: list[_Unit], config: ChunkConfig) -> Iterator[list[_Unit]]:
    """One chunk if ``first + rest`` fits, else two cut where the smaller one is largest."""
    units = first + rest
    if _size(units) <= config.max_tokens:
        yield units
        return
    best: tuple[int, int] | None = None  # (smaller size, cut)
    for cut in range(1, len(units)):
        head = units[:cut]
        tail = _overlap(head, min(config.overlap_tokens, config.max_tokens - _size(units[cut:]))) + units[cut:]
        if _size(head) <= config.max_tokens and _size(tail) <= config.max_tokens:
            smaller = min(_size(head), _size(tail))
            if best is None or smaller > best[0]:
                best = (smaller, cut)
    cut = best[1] if best is not None else len(first)
    head = units[:cut]
    yield head
    yield _overlap(head, min(config.overlap_tokens, max(0, config.max_tokens - _size(units[cut:])))) + units[cut:]


def _chunk_id(source: str, chapter: str | None, offset: int, text: str) -> str:
    """Stable id: the first 16 hex digits of blake2b(source, chapter, offset, text)."""
    key = "\x1f".join((source, chapter or "", str(offset), text))
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _make_chunk(units: list[_Unit], source: str, chapter: str | None, transcript: bool, count: Callable[[str], int]) -> Chunk:
    """The Chunk of packed units (text rebuilt with the original separators)."""
    text = units[0].text + "".join(unit.sep + unit.text for unit in units[1:])
    start = units[0].start if transcript else None
    end = units[-1].end if transcript else None
    lang, _ = detect_language(text)
    return Chunk(_chunk_id(source, chapter, units[0].offset, text), text, source, chapter, start, end, lang, count(text))


def chunk_documents(docs: Iterable[Document], config: ChunkConfig = ChunkConfig()) -> Iterator[Chunk]:
    """Chunks of ``docs`` in input order (see the module docstring); same input, same chunks."""
    count = token_counter(config.tokenizer)

    def group_key(doc: Document) -> tuple[str, str | None, bool]:
        return doc.source, doc.chapter, doc.kind == "transcript"

    for (source, chapter, transcript), group in groupby(docs, key=group_key):
        units = _units(group, transcript, config, count)
        for packed in _pack(units, config):
            yield _make_chunk(packed, source, chapter, transcript, count)
