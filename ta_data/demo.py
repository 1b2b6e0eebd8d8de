"""Built-in demo course and its converter to ``sft.jsonl``.

The demo course in :data:`COURSE_DIR` is a small, hand-written unit on
"Linear regression and gradient descent" (English and Chinese notes, a lecture
transcript in SRT, an FAQ, out-of-scope questions and two multi-turn
dialogues).  :func:`build_demo_records` turns it into supervised fine-tuning
records and :func:`write_sft` writes them as deterministic JSON lines.
The course-file parsers live in :mod:`ta_data.demo_parse` and are re-exported here.

Record contract (one of two forms, both with ``meta``)::

    Alpaca:   {"instruction": str, "input": str, "output": str, "meta": META}
    ShareGPT: {"conversations": [{"role": "user"|"assistant", "content": str}, ...],
               "system": str (optional), "meta": META}
    META:     {"source": str, "timestamp": "HH:MM:SS" | None, "kind": KIND}

Command line::

    python -m ta_data.demo output=DIR

Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Parser names are re-exported so ``from ta_data.demo import parse_srt, Cue, ...`` keeps working.
from .demo_parse import (
    CUE_GAP_SECONDS,
    MAX_WINDOW_CUES,
    MIN_WINDOW_CUES,
    Cue,
    Section,
    count_cjk,
    count_words,
    group_cues,
    is_chinese,
    parse_dialogues,
    parse_faq,
    parse_notes,
    parse_srt,
    seconds_to_hms,
)

DEMO_QUESTION: str = "What does the learning rate control in gradient descent?"
COURSE_DIR: Path = Path(__file__).parent / "demo_course"

SFT_FILENAME = "sft.jsonl"
KINDS: tuple[str, ...] = ("answer", "extract", "summary", "quiz", "refusal", "open")
MAX_OUTPUT_WORDS = 80
MAX_OUTPUT_CJK = 120

NOTES_FILES: tuple[tuple[str, str], ...] = (("notes_en.md", "en"), ("notes_zh.md", "zh"))
FAQ_FILE = "faq.md"
REFUSALS_FILE = "refusals.md"
DIALOGUES_FILE = "dialogues.md"
# (file name, topic in English, topic in Chinese)
LECTURE_FILES: tuple[tuple[str, str, str], ...] = (
    ("lecture_02.srt", "the learning rate", "学习率"),
)

Record = dict[str, Any]

_LECTURE_NO_RE = re.compile(r"(\d+)")

_EN_WINDOW_QUESTIONS = (
    "In lecture {n}, what does the teacher explain about {topic} around {ts}?",
    "What is said about {topic} in lecture {n} at {ts}?",
)
_ZH_WINDOW_QUESTIONS = (
    "第{n}讲 {ts} 左右，老师关于{topic}讲了什么？",
    "第{n}讲在 {ts} 讲了{topic}的哪些内容？",
)


# --------------------------------------------------------------------------- records


def _meta(source: str, kind: str, timestamp: str | None = None) -> dict[str, Any]:
    """The ``meta`` object shared by both record forms."""
    return {"source": source, "timestamp": timestamp, "kind": kind}


def alpaca_record(
    instruction: str,
    input_text: str,
    output: str,
    source: str,
    kind: str,
    timestamp: str | None = None,
) -> Record:
    """Build an Alpaca-form record."""
    return {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "meta": _meta(source, kind, timestamp),
    }


def chat_record(
    turns: Sequence[tuple[str, str]], source: str, kind: str, timestamp: str | None = None
) -> Record:
    """Build a ShareGPT-form record from ``(role, content)`` turns."""
    return {
        "conversations": [{"role": role, "content": content} for role, content in turns],
        "meta": _meta(source, kind, timestamp),
    }


def _section_label(section: Section) -> str:
    """Human-readable chapter path, e.g. ``Course > Section``."""
    return " > ".join(section.path)


def notes_records(sections: Sequence[Section], source: str, lang: str) -> list[Record]:
    """One ``extract`` and one ``summary`` record per notes section."""
    records: list[Record] = []
    for section in sections:
        label = _section_label(section)
        if lang == "zh":
            extract_q = f"根据讲义回答：「{label}」这一节的要点有哪些？"
            summary_q = f"请用一两句话总结讲义中「{label}」这一节。"
        else:
            extract_q = f'Using the lecture notes, list the key points of the section "{label}".'
            summary_q = (
                f'Summarize the section "{label}" of the lecture notes in one or two sentences.'
            )
        bullets = "\n".join(f"- {point}" for point in section.keypoints)
        records.append(alpaca_record(extract_q, section.body, bullets, source, "extract"))
        records.append(alpaca_record(summary_q, section.body, section.summary, source, "summary"))
    return records


def qa_records(pairs: Sequence[tuple[str, str]], source: str, kind: str) -> list[Record]:
    """One single-turn ShareGPT record per question/answer pair."""
    return [chat_record([("user", q), ("assistant", a)], source, kind) for q, a in pairs]


def _lecture_number(source: str) -> str:
    """Lecture number from a file name like ``lecture_02.srt`` (``"2"``), else the stem."""
    match = _LECTURE_NO_RE.search(Path(source).stem)
    return str(int(match.group(1))) if match else Path(source).stem


def lecture_records(cues: Sequence[Cue], source: str, topic_en: str, topic_zh: str) -> list[Record]:
    """One ``answer`` record per cue window, citing the window's start timestamp."""
    number = _lecture_number(source)
    records: list[Record] = []
    for position, window in enumerate(group_cues(cues)):
        stamp = seconds_to_hms(window[0].start)
        texts = [cue.text for cue in window]
        if is_chinese("".join(texts)):
            template = _ZH_WINDOW_QUESTIONS[position % len(_ZH_WINDOW_QUESTIONS)]
            question = template.format(n=number, ts=stamp, topic=topic_zh)
            answer = f"老师讲到：{''.join(texts)}（见第{number}讲 {stamp}）"
        else:
            template = _EN_WINDOW_QUESTIONS[position % len(_EN_WINDOW_QUESTIONS)]
            question = template.format(n=number, ts=stamp, topic=topic_en)
            answer = f"The teacher says: {' '.join(texts)} (see lecture {number} at {stamp})"
        records.append(
            chat_record([("user", question), ("assistant", answer)], source, "answer", stamp)
        )
    return records


def record_outputs(record: Record) -> list[str]:
    """The model-generated texts of a record (Alpaca output or assistant turns)."""
    if "conversations" in record:
        return [t["content"] for t in record["conversations"] if t["role"] == "assistant"]
    return [record["output"]]


def check_output_length(record: Record) -> None:
    """Raise ``ValueError`` when an output exceeds the word or Chinese-character limit."""
    for text in record_outputs(record):
        if count_words(text) >= MAX_OUTPUT_WORDS or count_cjk(text) >= MAX_OUTPUT_CJK:
            source = record["meta"]["source"]
            raise ValueError(
                f"{source}: output too long (limits: < {MAX_OUTPUT_WORDS} words, "
                f"< {MAX_OUTPUT_CJK} Chinese characters): {text[:60]!r}..."
            )


def _read(course_dir: Path, name: str) -> str:
    """Read a course file as UTF-8."""
    return (course_dir / name).read_text(encoding="utf-8")


def build_demo_records(course_dir: Path = COURSE_DIR) -> list[Record]:
    """Build the deterministic list of demo SFT records from the course files.

    Order: notes (extract + summary per section), FAQ answers, refusals, lecture
    transcript windows, multi-turn dialogues.
    """
    records: list[Record] = []
    for name, lang in NOTES_FILES:
        records += notes_records(parse_notes(_read(course_dir, name), name), name, lang)
    records += qa_records(parse_faq(_read(course_dir, FAQ_FILE), FAQ_FILE), FAQ_FILE, "answer")
    records += qa_records(
        parse_faq(_read(course_dir, REFUSALS_FILE), REFUSALS_FILE), REFUSALS_FILE, "refusal"
    )
    for name, topic_en, topic_zh in LECTURE_FILES:
        records += lecture_records(
            parse_srt(_read(course_dir, name), name), name, topic_en, topic_zh
        )
    for turns in parse_dialogues(_read(course_dir, DIALOGUES_FILE), DIALOGUES_FILE):
        records.append(chat_record(turns, DIALOGUES_FILE, "answer"))
    for record in records:
        check_output_length(record)
    return records


def write_sft(records: Sequence[Record], out_dir: Path) -> Path:
    """Write ``out_dir/sft.jsonl`` (UTF-8, sorted keys, one object per line); return its path.

    Written to a temporary file of this process and renamed over the path: several processes (the
    ranks of one run) write and read the same file at once, and a reader must never see it
    truncated or half written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SFT_FILENAME
    lines = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records)
    tmp = out_dir / f".{SFT_FILENAME}.{os.getpid()}.tmp"
    tmp.write_bytes("".join(lines).encode("utf-8"))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- CLI

_CLI_KEYS = ("output",)
_USAGE = "usage: python -m ta_data.demo output=DIR"


class CliError(Exception):
    """A bad command-line argument (reported with exit status 2)."""


def parse_cli_args(argv: Sequence[str]) -> dict[str, str]:
    """Parse ``key=value`` arguments; raise :class:`CliError` on unknown/duplicate/missing keys."""
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise CliError(f"expected key=value, got {arg!r}")
        if key not in _CLI_KEYS:
            raise CliError(f"unknown argument {key!r} (allowed: {', '.join(_CLI_KEYS)})")
        if key in values:
            raise CliError(f"argument {key!r} given twice")
        if not value:
            raise CliError(f"argument {key!r} needs a value")
        values[key] = value
    if "output" not in values:
        raise CliError("missing required argument output=DIR")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: build the demo records, write ``sft.jsonl`` and print counts per kind."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0
    try:
        options = parse_cli_args(args)
    except CliError as exc:
        print(f"ta_data.demo: error: {exc}\n{_USAGE}", file=sys.stderr)
        return 2
    records = build_demo_records()
    path = write_sft(records, Path(options["output"]))
    counts = Counter(record["meta"]["kind"] for record in records)
    for kind in sorted(counts):
        print(f"{kind}: {counts[kind]}")
    print(f"total: {len(records)}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
