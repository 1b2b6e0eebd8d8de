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
from collections.abc import Sequence
from dataclasses import dataclass, field

from ta_data.clean_filters import _FOLD_ALL, _WIDTH
from ta_data.quality import is_cjk


# ---------------------------------------------------------------------------------------------
# Width

KEPT_CJK_PUNCT = "，！？：；（）"
"""Full-width punctuation :func:`normalize_width` keeps in Chinese lines when ``keep_cjk_punct``:
U+FF0C ，  U+FF01 ！  U+FF1F ？  U+FF1A ：  U+FF1B ；  U+FF08 （  U+FF09 ）. NFKC would turn them into
``, ! ? : ; ( )``. The other Chinese punctuation (。、“”‘’《》【】「」〈〉) is not a compatibility
character, so NFKC leaves it alone anyway; every other full-width form (letters, digits, ＋ ％ ．
～ ＂ ［ ］ ...) is always folded."""

# _WIDTH: the full-width -> half-width table (defined in clean_filters, which matches on folded text).
_WIDTH_KEEP = {c: v for c, v in _WIDTH.items() if chr(c) not in KEPT_CJK_PUNCT}
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


from ta_data.clean_filters import (  # noqa: E402  (re-exported: the public API of the Clean stage)
    MAX_BOILERPLATE_CHARS,
    default_boilerplate_patterns,
    default_confidential_markers,
    is_confidential,
    load_sensitive_words,
    read_list,
    sensitive_hits,
    strip_boilerplate,
)


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
