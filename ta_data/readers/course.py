"""Read course material into Documents: markdown notes, plain text, PDF, SRT and WebVTT.

Every reader takes a path and a list; it yields what it can read and appends a Reject for
what it cannot (a malformed cue with its line, a whole unreadable file with line None).
Line numbers are 1-based and count "\\n", "\\r\\n" and "\\r" line ends alike.
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ta_data.records import Document, Reject

_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TIME = r"(?:(\d{1,}):)?([0-5]\d):([0-5]\d)[.,](\d{3})"
_SRT_TIMING_RE = re.compile(rf"^{_TIME}\s*-->\s*{_TIME}(?:\s.*)?$")
_VTT_TIMING_RE = re.compile(rf"^{_TIME}[ \t]+-->[ \t]+{_TIME}(?:[ \t].*)?$")
_TAG_RE = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # <i>, <v Name>, <c.x>, <00:01.000>, {\an8}
_SPEAKER_RE = re.compile(r"<v(?:\.[^\s>]*)?[ \t]+([^>]+)>")
_CJK_RE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_VTT_SKIPPED = ("NOTE", "STYLE", "REGION")


def source_name(path: Path) -> str:
    """The ``source``/``file`` string recorded for ``path`` (posix form, as given)."""
    return path.as_posix()


def read_lines(path: str | Path, rejects: list[Reject]) -> list[str] | None:
    """UTF-8 lines of ``path`` (BOM dropped); None plus one Reject if it cannot be read."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        rejects.append(Reject(source_name(path), None, reason, None))
        return None
    except OSError as exc:
        rejects.append(Reject(source_name(path), None, f"unreadable: {exc.strerror}", None))
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _blocks(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Blank-line separated blocks of stripped lines, each with its first 1-based line number."""
    current: list[str] = []
    first = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            first = first if current else number
            current.append(line.strip())
        elif current:
            yield first, current
            current = []
    if current:
        yield first, current


def _join_lines(lines: list[str]) -> str:
    """Join the display lines of a cue: no space between two CJK characters, else one space."""
    text = ""
    for line in lines:
        if text and not (_CJK_RE.match(text[-1]) and _CJK_RE.match(line[0])):
            text += " "
        text += line
    return text


# --------------------------------------------------------------------------- markdown, text


def _clean_body(lines: list[str]) -> str:
    """Section text: trailing spaces dropped, runs of blank lines collapsed, ends trimmed."""
    text = "\n".join(line.rstrip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _front_matter_end(lines: list[str]) -> int:
    """Index of the first line after a YAML front matter block (0 when there is none)."""
    if not lines or lines[0].strip() != "---":
        return 0
    for index in range(1, len(lines)):
        if lines[index].strip() in ("---", "..."):
            return index + 1
    return 0  # never closed: a thematic break, not front matter


def read_markdown(path: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """One "notes" Document per section; ``chapter`` is its heading path ("A > B > C").

    Text before the first heading has chapter None; YAML front matter is skipped. Fenced code
    blocks stay in the text and ``#`` lines inside them are not headings. Setext (underlined)
    headings are not recognised. ``meta["line"]`` is the section's heading line.
    """
    lines = read_lines(path, rejects)
    if lines is None:
        return
    source = source_name(Path(path))
    stack: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    body: list[str] = []
    body_line = _front_matter_end(lines) + 1
    fence = ""
    for number in range(body_line, len(lines) + 1):
        line = lines[number - 1]
        heading = None if fence else _HEADING_RE.match(line)
        if heading is None:
            fence = _next_fence(fence, line)
            body.append(line)
            continue
        yield from _section(body, source, stack, body_line)
        level, title = len(heading.group(1)), (heading.group(2) or "").strip()
        stack = [entry for entry in stack if entry[0] < level] + [(level, title)]
        body, body_line = [], number
    yield from _section(body, source, stack, body_line)


def _next_fence(fence: str, line: str) -> str:
    """The open fence marker after ``line`` ("" outside a fenced block)."""
    match = _FENCE_RE.match(line)
    if match is None:
        return fence
    marker = match.group(1)
    if not fence:
        return marker
    bare = not line.strip(marker[0] + " \t")  # a closing fence has no info string
    closes = marker[0] == fence[0] and len(marker) >= len(fence) and bare
    return "" if closes else fence


def _section(
    body: list[str], source: str, stack: list[tuple[int, str]], line: int
) -> Iterator[Document]:
    """The Document for one finished section, if it has any text."""
    text = _clean_body(body)
    if text:
        chapter = " > ".join(title for _, title in stack if title) or None
        yield Document(text, source, chapter, None, None, "notes", {"line": line})


def read_text(path: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """One "text" Document per blank-line separated paragraph (line breaks kept)."""
    lines = read_lines(path, rejects)
    if lines is None:
        return
    source = source_name(Path(path))
    for first, block in _blocks(lines):
        yield Document("\n".join(block), source, None, None, None, "text", {"line": first})


# --------------------------------------------------------------------------- PDF


def read_pdf(path: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """One "pdf" Document per page with text, ``meta={"page": n}`` (1-based).

    A page without extractable text (a scan) is a Reject naming the page; a file pypdf
    cannot open or decrypt is one Reject with line None.
    """
    from pypdf import PdfReader  # optional dependency, only needed for PDFs

    source = source_name(Path(path))
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ValueError("encrypted with a password")
        pages = list(reader.pages)
    except Exception as exc:  # pypdf raises many exception types on malformed input
        rejects.append(Reject(source, None, f"unreadable PDF: {exc}", None))
        return
    for number, page in enumerate(pages, start=1):
        try:
            text = _clean_body(page.extract_text().split("\n"))
        except Exception as exc:  # same: one bad page must not lose the others
            rejects.append(Reject(source, None, f"page {number}: {exc}", {"page": number}))
            continue
        if not text:
            reason = f"page {number}: no extractable text"
            rejects.append(Reject(source, None, reason, {"page": number}))
            continue
        yield Document(text, source, None, None, None, "pdf", {"page": number})


# --------------------------------------------------------------------------- SRT, WebVTT


def _seconds(groups: tuple[str | None, ...]) -> float:
    """(hours or None, minutes, seconds, millis) -> seconds; one division keeps 83.456 exact."""
    hours, minutes, secs, millis = (int(group or 0) for group in groups)
    return (((hours * 60 + minutes) * 60 + secs) * 1000 + millis) / 1000


def _cue_text(lines: list[str], vtt: bool) -> tuple[str, dict[str, str]]:
    """Cue text with markup (<i>, <font>, <v Name>, <c.x>, timestamps) removed; speaker in meta."""
    speaker = _SPEAKER_RE.search("".join(lines)) if vtt else None
    cleaned = [_TAG_RE.sub("", line).strip() for line in lines]
    cleaned = [html.unescape(line) if vtt else line for line in cleaned if line]
    return _join_lines(cleaned), ({"speaker": speaker.group(1).strip()} if speaker else {})


def _cue(first: int, block: list[str], source: str, vtt: bool) -> Document | Reject:
    """Parse one cue block (optional id line, timing line, text lines) starting at ``first``."""
    record = "\n".join(block)
    at = 0 if "-->" in block[0] else 1
    if at >= len(block) or "-->" not in block[at]:
        if block[0].isdigit() and len(block) > 1:  # a numbered cue: line 2 should be the timing
            return Reject(source, first + 1, f"malformed cue timing {block[1]!r}", record)
        return Reject(source, first, "cue has no timing line (no '-->')", record)
    match = (_VTT_TIMING_RE if vtt else _SRT_TIMING_RE).match(block[at])
    if match is None:
        return Reject(source, first + at, f"malformed cue timing {block[at]!r}", record)
    start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
    if end <= start:
        reason = f"cue ends at {end} s, not after its start {start} s"
        return Reject(source, first + at, reason, record)
    text, meta = _cue_text(block[at + 1 :], vtt)
    if not text:
        return Reject(source, first, "cue has no text", record)
    cue = block[0] if at == 1 else None
    number = cue is not None and cue.isascii() and cue.isdigit()
    meta = {"line": first, "cue": int(cue) if number else cue, **meta}
    return Document(text, source, None, start, end, "transcript", meta)


def _cues(
    blocks: Iterator[tuple[int, list[str]]], source: str, rejects: list[Reject], vtt: bool
) -> Iterator[Document]:
    """Documents for the cue blocks; malformed ones go to ``rejects``."""
    for first, block in blocks:
        cue = _cue(first, block, source, vtt)
        if isinstance(cue, Reject):
            rejects.append(cue)
        else:
            yield cue


def read_srt(path: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """One "transcript" Document per SRT cue (``HH:MM:SS,mmm --> HH:MM:SS,mmm``), in seconds.

    Lenient like players are: a "." before the millis, missing hours and trailing position
    coordinates are accepted; ``meta["cue"]`` is the cue number (int) when there is one.
    """
    lines = read_lines(path, rejects)
    if lines is not None:
        yield from _cues(_blocks(lines), source_name(Path(path)), rejects, vtt=False)


def read_vtt(path: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """One "transcript" Document per WebVTT cue; header, NOTE, STYLE and REGION blocks skipped.

    Timings may omit hours (``MM:SS.mmm``) and carry cue settings after the end time; tags
    are stripped, entities decoded, and the first ``<v Name>`` becomes ``meta["speaker"]``.
    A file whose first line is not ``WEBVTT`` is one Reject with line None.
    """
    lines = read_lines(path, rejects)
    if lines is None:
        return
    source = source_name(Path(path))
    if not re.match(r"^WEBVTT(?:[ \t].*)?$", lines[0]):
        rejects.append(Reject(source, None, "not WebVTT: first line is not 'WEBVTT'", lines[0]))
        return
    blocks = _blocks(lines)
    first, header = next(blocks)  # the WEBVTT line plus optional metadata lines
    if any("-->" in line for line in header):
        reason = "cue timing inside the header (no blank line after WEBVTT)"
        rejects.append(Reject(source, first, reason, "\n".join(header)))
    cue_blocks = (b for b in blocks if b[1][0].split(maxsplit=1)[0] not in _VTT_SKIPPED)
    yield from _cues(cue_blocks, source, rejects, vtt=True)


# --------------------------------------------------------------------------- files, folders

READERS: dict[str, Callable[[str | Path, list[Reject]], Iterator[Document]]] = {
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".txt": read_text,
    ".pdf": read_pdf,
    ".srt": read_srt,
    ".vtt": read_vtt,
}
"""Course reader per lower-case file extension."""


def read_course_file(path: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """Read one course file with the reader for its extension; others are one Reject."""
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        rejects.append(Reject(source_name(Path(path)), None, "unsupported file type", None))
        return
    yield from reader(path, rejects)


def iter_course_dir(root: str | Path, rejects: list[Reject]) -> Iterator[Document]:
    """Read every file under ``root`` (recursively) in sorted relative-path order."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"course folder {root} does not exist or is not a folder")
    files = [path for path in root.rglob("*") if path.is_file()]
    for path in sorted(files, key=lambda path: path.relative_to(root).as_posix()):
        yield from read_course_file(path, rejects)
