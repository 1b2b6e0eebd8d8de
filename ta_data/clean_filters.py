"""Line and document filters for the Clean stage: word lists, boilerplate lines, confidential
markings, sensitive words (ta_data.clean runs them; this module holds the matching rules).

Scripts are told apart by code point, never by ``\\b``: Python counts CJK characters as word
characters, so ``\\b`` does not fire between 率 and "lr" in "学习率lr".
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from ta_data.quality import is_cjk

RESOURCES = Path(__file__).resolve().parent / "resources"

# NFKC of every Halfwidth and Fullwidth Form (U+FF01-U+FFEE) that NFKC changes, plus the
# ideographic space U+3000 -> " ". Each maps to exactly one character. Other NFKC compatibility
# mappings (x² -> x2, ① -> 1, ﬁ -> fi, … -> ...) are deliberately NOT applied: they damage formulas.
_WIDTH = {
    c: unicodedata.normalize("NFKC", chr(c))
    for c in [*range(0xFF01, 0xFFEF), 0x3000]
    if unicodedata.normalize("NFKC", chr(c)) != chr(c)
}
_FOLD_ALL = str.maketrans(_WIDTH)

# ---------------------------------------------------------------------------------------------
# Word lists


def read_list(path: str | Path) -> tuple[str, ...]:
    """Non-empty lines of a UTF-8 file (BOM allowed), stripped; lines starting with # are comments."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))


@functools.lru_cache(maxsize=1)
def default_boilerplate_patterns() -> tuple[str, ...]:
    """Regexes of resources/clean_patterns_zh.txt then clean_patterns_en.txt (read once)."""
    return read_list(RESOURCES / "clean_patterns_zh.txt") + read_list(RESOURCES / "clean_patterns_en.txt")


@functools.lru_cache(maxsize=1)
def default_confidential_markers() -> tuple[str, ...]:
    """Literal markers of resources/confidential_markers.txt (read once)."""
    return read_list(RESOURCES / "confidential_markers.txt")


def load_sensitive_words(path: str | Path) -> tuple[str, ...]:
    """A user's sensitive-word list: one word or phrase per line, # comments. None ships."""
    return read_list(path)


# ---------------------------------------------------------------------------------------------
# Boilerplate

MAX_BOILERPLATE_CHARS = 200
"""Lines longer than this (stripped) are never removed as boilerplate: a paragraph that merely
mentions a phrase is content."""


@functools.lru_cache(maxsize=64)
def _compile(patterns: tuple[str | re.Pattern[str], ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(p if isinstance(p, re.Pattern) else re.compile(p, re.IGNORECASE) for p in patterns)


def strip_boilerplate(
    text: str,
    patterns: Iterable[str | re.Pattern[str]] | None = None,
    max_chars: int = MAX_BOILERPLATE_CHARS,
) -> tuple[str, list[str]]:
    """(text without boilerplate lines, the removed lines as they were).

    A line is removed when one of ``patterns`` (regex strings, compiled case-insensitive; None ->
    :func:`default_boilerplate_patterns`) is found in the width-folded line and the stripped line
    has at most ``max_chars`` characters. Only whole lines go; the rest keep their line breaks. The
    patterns describe boilerplate phrases ("版权所有", "关注…公众号", "All rights reserved"), so a
    course sentence about 版权 or a WeChat Pay case study is not touched.
    """
    compiled = _compile(tuple(default_boilerplate_patterns() if patterns is None else patterns))
    kept: list[str] = []
    removed: list[str] = []
    for line in text.splitlines(keepends=True):
        probe = line.strip().translate(_FOLD_ALL)
        if probe and len(probe) <= max_chars and any(p.search(probe) for p in compiled):
            removed.append(line.rstrip("\r\n"))
        else:
            kept.append(line)
    return "".join(kept), removed


# ---------------------------------------------------------------------------------------------
# Confidentiality

_LABELS = (
    "密级", "文件密级", "保密级别", "保密等级", "秘密等级", "密级标识",
    "classification", "securityclassification", "classified",
    "strictly", "highly", "company", "proprietary", "and",
)
"""Words that may surround a marker on a marking line ("密级：机密★10年", "Strictly Confidential")."""
_PERIOD = r"[0-9]+(?:年|个月|月|天|years?|months?)?"
_LABEL_COLON = r"(?:密级|文件密级|保密级别|保密等级|(?i:security )?(?i:classification))\s*[:：]\s*[\[【(（「<《]?\s*"


def _core(s: str) -> str:
    """Width-folded, lower-cased ``s`` without punctuation, symbols, spaces or control characters."""
    s = s.translate(_FOLD_ALL).lower()
    return "".join(c for c in s if unicodedata.category(c)[0] not in "PSZC")


@functools.lru_cache(maxsize=16)
def _marker_rules(markers: tuple[str, ...]):  # -> (line regex, start regexes, label regex, core->marker)
    by_core = {}
    for m in markers:
        by_core.setdefault(_core(m), m)
    by_core.pop("", None)
    if not by_core:
        return None
    alt = "|".join(re.escape(c) for c in sorted(by_core, key=len, reverse=True))
    labels = "|".join(re.escape(x) for x in _LABELS)
    line_rx = re.compile(rf"(?:{labels}|{_PERIOD})*({alt})(?:{labels}|{_PERIOD}|{alt})*")
    starts = []
    for m in markers:
        folded = m.translate(_FOLD_ALL).strip()
        if not folded:
            continue
        words = r"\s+".join(re.escape(w) for w in folded.split())
        if any(is_cjk(c) for c in folded):  # 机密★5年
            starts.append((re.compile(rf"^[^\w]*({words})\s*[★☆]"), m))
        elif folded.upper() != folded.lower():  # CONFIDENTIAL: ..., upper case only
            starts.append((re.compile(rf"^[^\w]*({words.upper()})\s*[:：|/★☆\-–—]"), m))
    label_rx = re.compile(
        _LABEL_COLON + "(" + "|".join(r"\s*".join(map(re.escape, m.translate(_FOLD_ALL).split()))
                                      for m in sorted(markers, key=len, reverse=True) if m.strip()) + ")",
        re.IGNORECASE,
    )
    return line_rx, starts, label_rx, by_core


def _marker_of(found: str, markers: Sequence[str]) -> str:
    key = _core(found)
    return next((m for m in markers if _core(m) == key), found)


def is_confidential(text: str, markers: Iterable[str] | None = None) -> str | None:
    """The first confidentiality marker found in ``text`` (as written in ``markers``), else None.

    ``markers`` are literal strings (None -> :func:`default_confidential_markers`), compared
    case-insensitively after width folding. A marker counts only as a *marking*, on any line:

    1. the line holds nothing but markers, classification labels (密级, Classification, Strictly,
       Company...), periods (10年) and punctuation/symbols: "【内部资料】", "机密★10年",
       "密级：秘密", "CONFIDENTIAL", "Internal use only – do not distribute";
    2. a CJK marker directly followed by ★/☆ opens the line: "绝密★启用前 ...";
    3. a Latin marker in upper case opens the line before ``: - | /``: "CONFIDENTIAL: draft ...";
    4. the marker follows "密级:" / "Classification:" anywhere in a line.

    So course words do not reject a document: "机密性、完整性和可用性", "秘密共享",
    "Confidential computing protects data in use", "this API is for internal use only."
    The caller rejects the whole document when a marker is returned.
    """
    markers = tuple(default_confidential_markers() if markers is None else markers)
    rules = _marker_rules(markers)
    if rules is None:
        return None
    line_rx, starts, label_rx, by_core = rules
    for line in text.splitlines():
        folded = line.translate(_FOLD_ALL).strip()
        if not folded:
            continue
        m = line_rx.fullmatch(_core(folded))
        if m:
            return by_core[m.group(1)]
        for rx, marker in starts:
            if rx.search(folded):
                return marker
        m = label_rx.search(folded)
        if m:
            return _marker_of(m.group(1), markers)
    return None


# ---------------------------------------------------------------------------------------------
# Sensitive words


def _word_regex(word: str) -> str:
    """``word`` escaped; a Latin letter/digit at either end gets an ASCII word-edge lookaround."""
    rx = r"\s+".join(re.escape(w) for w in word.split())
    if word[0].isascii() and word[0].isalnum():
        rx = r"(?<![A-Za-z0-9])" + rx
    if word[-1].isascii() and word[-1].isalnum():
        rx += r"(?![A-Za-z0-9])"
    return rx


@functools.lru_cache(maxsize=8)
def _sensitive_regex(words: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]] | None:
    folded = {}
    for w in words:
        key = " ".join(w.translate(_FOLD_ALL).split()).lower()
        if key:
            folded.setdefault(key, w)
    if not folded:
        return None
    alt = "|".join(_word_regex(k) for k in sorted(folded, key=len, reverse=True))
    return re.compile(alt, re.IGNORECASE), folded


def sensitive_hits(text: str, words: Iterable[str]) -> list[str]:
    """The words of ``words`` found in ``text`` (as written in the list), each once, in order of
    first occurrence. Case-insensitive, after width folding; Latin words match whole words only
    ("ass" does not hit "class"), CJK words anywhere. Load a list with :func:`load_sensitive_words`.
    """
    found = _sensitive_regex(tuple(words))
    if found is None:
        return []
    rx, by_key = found
    hits: list[str] = []
    for m in rx.finditer(text.translate(_FOLD_ALL)):
        word = by_key.get(" ".join(m.group().split()).lower(), m.group())
        if word not in hits:
            hits.append(word)
    return hits


# ---------------------------------------------------------------------------------------------
# One document
