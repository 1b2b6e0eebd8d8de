"""PII stage of ta_data: find and replace personal data in course text with typed placeholders.

Kinds and placeholders: PHONE (Chinese mobile, with +86 / 0086, spaces, dashes or full-width digits),
LANDLINE (area code 0xx/0xxx, 400/800), EMAIL (also ``＠``, ``[at]`` and spelled ``at ... dot``),
ID_CARD (18-digit resident ID with a valid checksum and birth date), STUDENT_ID (after a keyword
such as 学号 / Student ID, or any roster ID) and NAME (``<NAME_1>``, ``<NAME_2>``: the same name
gets the same number within a document; see ta_data.pii_names).

Matching runs on a width-folded copy of the text (full-width ASCII, Unicode dashes and the
ideographic space mapped 1:1 to ASCII), so offsets are the original's. Digit runs are delimited by
explicit (?<![0-9]) / (?![0-9]) lookarounds, never ``\\b``: Python counts CJK characters as word
characters, so ``\\b`` does not fire between 话 and 1 in "电话13812345678".
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ta_data.pii_names import find_name_spans, is_cjk, name_numbers

Kind = Literal["ID_CARD", "EMAIL", "STUDENT_ID", "PHONE", "LANDLINE", "NAME"]
KINDS: tuple[Kind, ...] = ("ID_CARD", "EMAIL", "STUDENT_ID", "PHONE", "LANDLINE", "NAME")
"""All kinds, in the priority order used when two detections overlap (ID card wins)."""

_FOLD = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}  # full-width ASCII -> ASCII
_FOLD.update({0x3000: 0x20, 0x00A0: 0x20})
_FOLD.update({c: ord("-") for c in (0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xFE63)})

_MOBILE = re.compile(
    r"(?<![0-9])(?<![0-9][.,])"  # not the tail of a longer number or a decimal (3.14159265358)
    r"(?:(?:\+|00) ?86[ -]?|\(\+?86\) ?|86[ -]?)?"
    r"1[3-9][0-9](?:[ .-]?[0-9]{4}){2}(?![0-9])"
)
_AREA = r"0(?:10|2[0-9]|[3-9][0-9]{2})"
_LANDLINE = re.compile(
    rf"(?<![0-9])(?:(?:\+86|0086)[ -]?(?:10|2[0-9]|[3-9][0-9]{{2}})[ -]|\({_AREA}\) ?|{_AREA}[ -])"
    r"[2-9][0-9]{2,3}[ -]?[0-9]{4}(?:(?: ?(?:-|转|ext\.?) ?)[0-9]{1,5})?(?![0-9])"
    r"|(?<![0-9])[48]00[ -][0-9]{3}[ -][0-9]{4}(?![0-9])"
)
_LANDLINE_KEYWORD = re.compile(  # bare 01062751234 only after a telephone keyword
    rf"(?:电话|座机|固话|传真|(?i:tel|phone|fax))[^0-9\n]{{0,6}}?({_AREA}[2-9][0-9]{{6,7}})(?![0-9])"
)
_ID_CARD = re.compile(
    r"(?<![0-9])[1-9][0-9]{5} ?(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r" ?[0-9]{3}[0-9Xx](?![0-9])"
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_LOCAL = r"[A-Za-z0-9][A-Za-z0-9._%+-]*"
_AT = r"(?: ?@ ?| ?[\[(<{] ?(?:at|AT|At|@) ?[\])>}] ?)"
_DOT = r"(?:\.| ?[\[(<{] ?(?:dot|DOT|Dot) ?[\])>}] ?)"
_TLD = r"(?:com|cn|net|org|edu|gov|io|ai|me|info|hk|tw|uk|us|jp|de|fr|ca|au|sg)"
_EMAIL = re.compile(
    rf"{_LOCAL}{_AT}[A-Za-z0-9-]+(?:{_DOT}[A-Za-z0-9-]+)*{_DOT}[A-Za-z]{{2,}}(?![A-Za-z0-9-])"
    rf"|{_LOCAL} (?:at|AT) [A-Za-z0-9-]+(?: (?:dot|DOT) [A-Za-z0-9-]+)* (?:dot|DOT) {_TLD}(?![A-Za-z0-9])"
)
_SID_VALUE = r"[A-Za-z]{0,3}[0-9]{4,14}"
_STUDENT_ID = re.compile(
    r"(?:学号|学生证号|学籍号|学生编号|学生号|(?<![A-Za-z])(?i:student ?(?:id|no\.?|number|#)|stu(?:dent)?[_-]?id|sid)"
    r"(?: ?(?i:number|no\.?))?)"
    rf" *(?:[:：#=]|是|为|(?i:is))? *({_SID_VALUE}(?: *(?:[、/]|和|(?i:and)) *{_SID_VALUE})*)(?![0-9A-Za-z])"
)
_SID_ONE = re.compile(rf"(?<![0-9A-Za-z]){_SID_VALUE}(?![0-9A-Za-z])")
_ALNUM_RUN = re.compile(r"[0-9A-Za-z]+")  # roster IDs are compared as whole runs


@dataclass(frozen=True)
class Span:
    """One detection: text[start:end] (code-point offsets into the original text) is PII of `kind`."""

    start: int
    end: int
    kind: Kind
    text: str


@dataclass(frozen=True)
class ScrubResult:
    """A scrubbed document: the new text, detections per kind (all kinds, zeros included), spans."""

    text: str
    counts: dict[str, int]
    spans: list[Span]


@dataclass(frozen=True)
class Roster:
    """Course roster: names and student IDs that are PII wherever they appear."""

    names: frozenset[str] = frozenset()
    student_ids: frozenset[str] = frozenset()


class RosterError(ValueError):
    """A malformed roster row; the message names the file and the 1-based line."""


def fold_width(text: str) -> str:
    """Map full-width ASCII, Unicode dashes and wide spaces to ASCII, one character for one."""
    return text.translate(_FOLD)


def id_card_valid(number: str) -> bool:
    """True when an 18-character resident ID has a real birth date and a correct ISO 7064 check."""
    digits = number.replace(" ", "").upper()
    if len(digits) != 18 or not digits[:17].isdigit():
        return False
    try:
        dt.date(int(digits[6:10]), int(digits[10:12]), int(digits[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == digits[17]


def _id_cards(t: str) -> list[tuple[int, int]]:
    """18-digit ID-card shapes whose date and check character are valid (others stay text)."""
    return [(m.start(), m.end()) for m in _ID_CARD.finditer(t) if id_card_valid(m.group())]


def _landlines(t: str) -> list[tuple[int, int]]:
    """Landlines with a separated or bracketed area code, 400/800 lines, bare ones after 电话/Tel."""
    spans = [(m.start(), m.end()) for m in _LANDLINE.finditer(t)]
    return spans + [(m.start(1), m.end(1)) for m in _LANDLINE_KEYWORD.finditer(t)]


def _student_ids(t: str, roster: Roster | None) -> list[tuple[int, int]]:
    """IDs after a keyword (each of a list: 学号 2021001、2021002), then roster IDs anywhere."""
    spans = []
    for m in _STUDENT_ID.finditer(t):
        base = m.start(1)
        spans += [(base + v.start(), base + v.end()) for v in _SID_ONE.finditer(m.group(1))]
    if roster and roster.student_ids:
        spans += [(m.start(), m.end()) for m in _ALNUM_RUN.finditer(t) if m.group() in roster.student_ids]
    return spans


def _candidates(t: str, roster: Roster | None) -> list[tuple[int, int, Kind]]:
    """Every detector's raw spans on the folded text; they may overlap."""
    out: list[tuple[int, int, Kind]] = [(s, e, "ID_CARD") for s, e in _id_cards(t)]
    out += [(m.start(), m.end(), "EMAIL") for m in _EMAIL.finditer(t)]
    out += [(s, e, "STUDENT_ID") for s, e in _student_ids(t, roster)]
    out += [(m.start(), m.end(), "PHONE") for m in _MOBILE.finditer(t)]
    out += [(s, e, "LANDLINE") for s, e in _landlines(t)]
    names = roster.names if roster else frozenset()
    out += [(s, e, "NAME") for s, e in find_name_spans(t, names)]
    return out


def _resolve(cands: list[tuple[int, int, Kind]], length: int) -> list[tuple[int, int, Kind]]:
    """Keep a non-overlapping subset: higher-priority kind first, then the longer span, then earlier."""
    used = bytearray(length)  # 1 where a kept span already covers the character
    taken: list[tuple[int, int, Kind]] = []
    for s, e, kind in sorted(cands, key=lambda c: (KINDS.index(c[2]), c[0] - c[1], c[0])):
        if not any(used[s:e]):
            used[s:e] = b"\x01" * (e - s)
            taken.append((s, e, kind))
    return sorted(taken)


def find_pii(text: str, roster: Roster | None = None) -> list[Span]:
    """PII spans of text, non-overlapping and sorted by start."""
    return [Span(s, e, k, text[s:e]) for s, e, k in _resolve(_candidates(fold_width(text), roster), len(text))]


def scrub(text: str, roster: Roster | None = None) -> ScrubResult:
    """Replace every PII span with its placeholder; names are numbered per document in order."""
    spans = find_pii(text, roster)
    numbers = iter(name_numbers([fold_width(s.text) for s in spans if s.kind == "NAME"]))
    parts, pos = [], 0
    for span in spans:
        tag = f"NAME_{next(numbers)}" if span.kind == "NAME" else span.kind
        parts += [text[pos : span.start], f"<{tag}>"]
        pos = span.end
    parts.append(text[pos:])
    counts = Counter(s.kind for s in spans)
    return ScrubResult("".join(parts), {k: counts.get(k, 0) for k in KINDS}, spans)


_NAME_HEADERS = {"name", "姓名", "full_name", "fullname"}
_ID_HEADERS = {"student_id", "studentid", "id", "sid", "学号", "student id"}


def _roster_row(fields: list[str], where: str) -> tuple[str | None, str | None]:
    """(name, student_id) of one roster row; either may be None, not both."""
    fields = [f.strip() for f in fields if f.strip()]
    if not fields or len(fields) > 2:
        raise RosterError(f"{where}: expected 'name', 'student_id' or 'name,student_id', got {len(fields)} fields")
    ids = [f for f in fields if re.fullmatch(_SID_VALUE, fold_width(f))]
    names = [f for f in fields if f not in ids]
    if len(ids) > 1 or len(names) > 1:
        raise RosterError(f"{where}: expected one name and/or one student ID, got {fields!r}")
    name = names[0] if names else None
    if name is not None and (any(c.isdigit() for c in name) or not (is_cjk(name[0]) or name[0].isalpha())):
        raise RosterError(f"{where}: {name!r} is neither a name nor a student ID (letters 0-3 + digits 4-14)")
    return name, (fold_width(ids[0]) if ids else None)


def load_roster(path: str | Path) -> Roster:
    """Read a roster: one student per line as `name`, `student_id` or `name,student_id`.

    .csv is parsed with the csv module; other files split on comma or tab. Blank lines and lines
    starting with # are skipped, and so is a first row of column headers (name/姓名, student_id/学号).
    Raises RosterError naming the file and line of the first malformed row.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    rows = csv.reader(lines) if path.suffix.lower() == ".csv" else (re.split(r"[,\t]", ln) for ln in lines)
    names: set[str] = set()
    ids: set[str] = set()
    for lineno, fields in enumerate(rows, start=1):
        if not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and {f.strip().lower() for f in fields} <= _NAME_HEADERS | _ID_HEADERS:
            continue
        name, sid = _roster_row(fields, f"{path}:{lineno}")
        names.update([fold_width(name)] if name else [])
        ids.update([sid] if sid else [])
    return Roster(frozenset(names), frozenset(ids))
