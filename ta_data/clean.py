"""Stage 2 of ta_data ("Clean"): repair and normalise text, drop boilerplate, reject marked documents.

:func:`clean_document` runs, in order: :func:`fix_mojibake` (ftfy, optional), :func:`normalize_width`,
:func:`to_simplified` (opencc t2s, optional), :func:`normalize_whitespace`, :func:`is_confidential`
(a marked document is rejected whole), :func:`strip_boilerplate` (whole lines) and
:func:`sensitive_hits`. Each step can be switched off in :class:`CleanConfig`.

Optional dependencies are imported lazily, on first use: ``ftfy`` (``pip install ftfy``) and
``opencc`` (PyPI ``opencc`` 1.x, or ``opencc-python-reimplemented``; both expose
``opencc.OpenCC("t2s")``). Without them the steps return the text unchanged and
:attr:`CleanResult.skipped` says which step was skipped and why.

Scripts are told apart by code point, never by ``\\b``: Python counts CJK characters as word
characters, so ``\\b`` does not fire between 率 and "lr" in "学习率lr". Latin word edges in the
pattern lists are written as ``(?<![a-z])`` / ``(?![a-z])``.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ta_data.quality import is_cjk

RESOURCES = Path(__file__).resolve().parent / "resources"

# ---------------------------------------------------------------------------------------------
# Width

KEPT_CJK_PUNCT = "，！？：；（）"
"""Full-width punctuation :func:`normalize_width` keeps in Chinese lines when ``keep_cjk_punct``:
U+FF0C ，  U+FF01 ！  U+FF1F ？  U+FF1A ：  U+FF1B ；  U+FF08 （  U+FF09 ）. NFKC would turn them into
``, ! ? : ; ( )``. The other Chinese punctuation (。、“”‘’《》【】「」〈〉) is not a compatibility
character, so NFKC leaves it alone anyway; every other full-width form (letters, digits, ＋ ％ ．
～ ＂ ［ ］ ...) is always folded."""

# NFKC of every Halfwidth and Fullwidth Form (U+FF01-U+FFEE) that NFKC changes, plus the
# ideographic space U+3000 -> " ". Each maps to exactly one character. Other NFKC compatibility
# mappings (x² -> x2, ① -> 1, ﬁ -> fi, … -> ...) are deliberately NOT applied: they damage formulas.
_WIDTH = {
    c: unicodedata.normalize("NFKC", chr(c))
    for c in [*range(0xFF01, 0xFFEF), 0x3000]
    if unicodedata.normalize("NFKC", chr(c)) != chr(c)
}
_WIDTH_KEEP = {c: v for c, v in _WIDTH.items() if chr(c) not in KEPT_CJK_PUNCT}
_FOLD_ALL = str.maketrans(_WIDTH)
_FOLD_KEEP = str.maketrans(_WIDTH_KEEP)


def _has_cjk(line: str) -> bool:
    return any(is_cjk(c) for c in line)


def normalize_width(text: str, keep_cjk_punct: bool = True) -> str:
    """Fold full-width letters, digits and ASCII symbols to ASCII (and half-width katakana, ｡｢｣､
    to full width): NFKC restricted to U+FF01-U+FFEE and the ideographic space U+3000 -> " ".

    With ``keep_cjk_punct`` the characters of :data:`KEPT_CJK_PUNCT` stay full-width on every line
    that contains a CJK ideograph ("Chinese text" is decided per line, so "设x，y为实数" keeps its
    ，); on lines without one they are folded too ("Adam，SGD" -> "Adam,SGD").
    """
    if not keep_cjk_punct:
        return text.translate(_FOLD_ALL)
    return "".join(
        line.translate(_FOLD_KEEP if _has_cjk(line) else _FOLD_ALL)
        for line in text.splitlines(keepends=True)
    )


# ---------------------------------------------------------------------------------------------
# Whitespace

_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
"""Removed by :func:`normalize_whitespace`: zero-width space / non-joiner / joiner, word joiner,
BOM (ZWNBSP). Removing U+200D splits emoji ZWJ sequences into their parts."""
_DELETE = {ord(c): None for c in _INVISIBLE}
_DELETE.update({c: None for c in [*range(0x00, 0x09), *range(0x0E, 0x1C), 0x7F]})  # C0 controls
_DELETE.update({c: "\n" for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)})  # breaks
_HSPACE = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_INDENT = re.compile("[ \t]*")


def normalize_whitespace(text: str, keep_indent: bool = True) -> str:
    """Tidy whitespace and keep the line structure.

    - ``\\r\\n`` / ``\\r``, form feed, vertical tab, U+0085, U+2028/9 become ``\\n``;
    - zero-width characters and the BOM (see ``_INVISIBLE``) and C0 control characters other than
      tab and newline are removed;
    - inside a line, runs of spaces, tabs, no-break and other Unicode spaces become one space;
      line ends are stripped (a whitespace-only line becomes blank);
    - with ``keep_indent`` the leading run of spaces/tabs is kept as is (code blocks and nested
      lists in notes); without it lines are stripped on both sides;
    - at most one blank line in a row; no blank line at the start or end; no final newline.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_DELETE)
    out: list[str] = []
    for line in text.split("\n"):
        indent = _INDENT.match(line).group() if keep_indent else ""  # type: ignore[union-attr]
        body = _HSPACE.sub(" ", line[len(indent):]).strip(" ")
        line = indent + body if body else ""
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Optional: ftfy and opencc


@functools.lru_cache(maxsize=1)
def _ftfy():  # -> (ftfy module, TextFixerConfig) | None
    try:
        import ftfy
    except ImportError:
        return None
    # Encoding repair only: ftfy's defaults would also fold width (，-> ,), uncurl “” quotes,
    # unescape HTML in code samples and expand ligatures, which are not this function's business.
    config = ftfy.TextFixerConfig(
        unescape_html=False,
        remove_terminal_escapes=False,
        fix_latin_ligatures=False,
        fix_character_width=False,
        uncurl_quotes=False,
        fix_line_breaks=False,
        remove_control_chars=False,
        normalization=None,
        explain=False,
    )
    return ftfy, config


def ftfy_available() -> bool:
    """True when ftfy is installed (imports it on first call)."""
    return _ftfy() is not None


def fix_mojibake(text: str) -> tuple[str, bool | None]:
    """(text, fixed): repair UTF-8 decoded as Latin-1/cp1252 ("cafÃ©" -> "café") with ftfy.

    ``fixed`` is True when ftfy changed the text, False when it found nothing to fix, and None
    when ftfy is not installed (the text is returned unchanged). Only ftfy's encoding fixes run.
    """
    found = _ftfy()
    if found is None:
        return text, None
    ftfy, config = found
    fixed = ftfy.fix_text(text, config)
    return fixed, fixed != text


@functools.lru_cache(maxsize=1)
def _t2s():  # -> opencc.OpenCC | None
    try:
        import opencc
    except ImportError:
        return None
    for name in ("t2s", "t2s.json"):  # opencc 1.x accepts both; the reimplementation "t2s"
        try:
            return opencc.OpenCC(name)
        except Exception:  # noqa: BLE001 - a missing config raises library-specific errors
            continue
    return None


def opencc_available() -> bool:
    """True when opencc is installed and its t2s conversion loads (imports it on first call)."""
    return _t2s() is not None


def to_simplified(text: str, enabled: bool = True) -> tuple[str, bool | None]:
    """(text, converted): Traditional -> Simplified Chinese with opencc t2s ("學習率" -> "学习率").

    ``converted`` is True when the text changed, False when it did not or ``enabled`` is False,
    and None when opencc is not installed (the text is returned unchanged).
    """
    if not enabled:
        return text, False
    converter = _t2s()
    if converter is None:
        return text, None
    out = converter.convert(text)
    return out, out != text


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


@dataclass(frozen=True)
class CleanConfig:
    """Options of :func:`clean_document`; the pattern lists default to the resource files."""

    fix_mojibake: bool = True
    """Repair mojibake with ftfy (skipped, and reported, when ftfy is not installed)."""
    normalize_width: bool = True
    keep_cjk_punct: bool = True
    """See :func:`normalize_width` and :data:`KEPT_CJK_PUNCT`."""
    to_simplified: bool = True
    """Traditional -> Simplified with opencc t2s (skipped, and reported, without opencc)."""
    normalize_whitespace: bool = True
    keep_indent: bool = True
    """Keep leading spaces/tabs (code in notes); see :func:`normalize_whitespace`."""
    boilerplate_patterns: tuple[str, ...] = field(default_factory=default_boilerplate_patterns)
    max_boilerplate_chars: int = MAX_BOILERPLATE_CHARS
    confidential_markers: tuple[str, ...] = field(default_factory=default_confidential_markers)
    """Empty -> confidentiality is not checked."""
    sensitive_words: tuple[str, ...] = ()
    """None ship; pass ``load_sensitive_words(path)``."""
    reject_sensitive: bool = True
    """Reject a document with a sensitive word (else only report it in ``sensitive_hits``)."""


@dataclass(frozen=True)
class CleanResult:
    """One cleaned document. ``rejected_reason`` is None when kept, else why the caller drops it:
    "confidential: <marker>", "sensitive: <w1>, <w2>" or "empty after cleaning"."""

    text: str
    rejected_reason: str | None
    removed_lines: list[str]
    flags: dict[str, bool]
    """{"mojibake_fixed": ftfy changed the text, "t2s": opencc changed the text}."""
    skipped: tuple[str, ...] = ()
    """Enabled steps that did not run, with why: "fix_mojibake: ftfy not installed"."""
    sensitive_hits: tuple[str, ...] = ()


def clean_document(text: str, config: CleanConfig | None = None) -> CleanResult:
    """Clean one document: mojibake, width, t2s, whitespace, then the confidentiality check (on the
    whole normalised text, before any line is removed), boilerplate lines and sensitive words."""
    config = CleanConfig() if config is None else config
    flags = {"mojibake_fixed": False, "t2s": False}
    skipped: list[str] = []
    if config.fix_mojibake:
        text, fixed = fix_mojibake(text)
        flags["mojibake_fixed"] = bool(fixed)
        if fixed is None:
            skipped.append("fix_mojibake: ftfy not installed")
    if config.normalize_width:
        text = normalize_width(text, config.keep_cjk_punct)
    if config.to_simplified:
        text, converted = to_simplified(text)
        flags["t2s"] = bool(converted)
        if converted is None:
            skipped.append("to_simplified: opencc not installed")
    if config.normalize_whitespace:
        text = normalize_whitespace(text, config.keep_indent)

    def result(reason: str | None, removed: list[str], hits: Sequence[str] = ()) -> CleanResult:
        return CleanResult(text, reason, removed, flags, tuple(skipped), tuple(hits))

    marker = is_confidential(text, config.confidential_markers) if config.confidential_markers else None
    if marker is not None:
        return result(f"confidential: {marker}", [])
    text, removed = strip_boilerplate(text, config.boilerplate_patterns, config.max_boilerplate_chars)
    if config.normalize_whitespace:
        text = normalize_whitespace(text, config.keep_indent)  # blank lines left by removed ones
    hits = sensitive_hits(text, config.sensitive_words) if config.sensitive_words else []
    if hits and config.reject_sensitive:
        return result("sensitive: " + ", ".join(hits), removed, hits)
    if not text.strip():
        return result("empty after cleaning", removed, hits)
    return result(None, removed, hits)
