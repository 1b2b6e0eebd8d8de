"""Tests for the built-in demo course and its ``sft.jsonl`` converter (``ta_data.demo``)."""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    from ta_data import demo
except ImportError:  # running from outside the repo without an install
    sys.path.insert(0, str(ROOT))
    from ta_data import demo

TIMESTAMP_RE = re.compile(r"^\d{2}:[0-5]\d:[0-5]\d$")
META_KEYS = {"source", "timestamp", "kind"}
VALID_KINDS = {"answer", "extract", "summary", "quiz", "refusal", "open"}
SRT_NAME = "lecture_02.srt"


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    """The demo records, built once for the module."""
    return demo.build_demo_records()


@pytest.fixture(scope="module")
def shipped_cues() -> list[demo.Cue]:
    """Cues of the shipped lecture transcript."""
    return demo.parse_srt((demo.COURSE_DIR / SRT_NAME).read_text(encoding="utf-8"), SRT_NAME)


def _contract_errors(record: dict[str, Any]) -> list[str]:
    """Independent check of the sft record contract; returns a list of problems."""
    errors: list[str] = []
    meta = record.get("meta")
    if not isinstance(meta, dict) or set(meta) != META_KEYS:
        return [f"meta must have exactly {sorted(META_KEYS)}: {meta!r}"]
    if not isinstance(meta["source"], str) or not meta["source"]:
        errors.append("meta.source must be a non-empty string")
    if meta["kind"] not in VALID_KINDS:
        errors.append(f"invalid kind {meta['kind']!r}")
    ts = meta["timestamp"]
    if ts is not None and not (isinstance(ts, str) and TIMESTAMP_RE.match(ts)):
        errors.append(f"bad timestamp {ts!r}")
    if "conversations" in record:
        if not set(record) <= {"conversations", "system", "meta"}:
            errors.append(f"unexpected ShareGPT keys {sorted(record)}")
        if "system" in record and not isinstance(record["system"], str):
            errors.append("system must be a string")
        turns = record["conversations"]
        roles = [t.get("role") for t in turns]
        expected = ["user", "assistant"] * (len(turns) // 2)
        if not turns or len(turns) % 2 or roles != expected:
            errors.append(f"roles must alternate user/assistant and end with assistant: {roles}")
        for turn in turns:
            if set(turn) != {"role", "content"} or not str(turn.get("content", "")).strip():
                errors.append(f"bad turn {turn!r}")
    else:
        if set(record) != {"instruction", "input", "output", "meta"}:
            errors.append(f"Alpaca record keys wrong: {sorted(record)}")
        for key in ("instruction", "input", "output"):
            if not isinstance(record.get(key), str):
                errors.append(f"{key} must be a string")
        if (
            not str(record.get("instruction", "")).strip()
            or not str(record.get("output", "")).strip()
        ):
            errors.append("instruction and output must be non-empty")
    return errors


def _outputs(record: dict[str, Any]) -> list[str]:
    """Assistant-side texts of a record."""
    if "conversations" in record:
        return [t["content"] for t in record["conversations"] if t["role"] == "assistant"]
    return [record["output"]]


# --------------------------------------------------------------------------- SRT


def test_shipped_srt_parses_monotonic(shipped_cues: list[demo.Cue]) -> None:
    assert 20 <= len(shipped_cues) <= 30
    assert [c.index for c in shipped_cues] == list(range(1, len(shipped_cues) + 1))
    for cue in shipped_cues:
        assert cue.start < cue.end, cue
        assert cue.text.strip()
    for prev, cur in itertools.pairwise(shipped_cues):
        assert prev.start <= cur.start and prev.end <= cur.start + 1e-9
    assert 600 <= shipped_cues[0].start < 660
    assert 900 <= shipped_cues[-1].end <= 960


def test_parse_srt_values_and_crlf() -> None:
    text = (
        "\ufeff1\r\n00:10:02,140 --> 00:10:08,600\r\nhello\r\nworld\r\n\r\n"
        "2\r\n01:00:00,000 --> 01:00:01,500\r\n学习率\r\n"
    )
    cues = demo.parse_srt(text, "x.srt")
    assert cues == [
        demo.Cue(1, 602.14, 608.6, "hello world"),
        demo.Cue(2, 3600.0, 3601.5, "学习率"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "1\n00:00:01,000 --> 00:00:02,000\nok\n\nx\n00:00:03,000 --> 00:00:04,000\nbad\n",
            5,
            "cue number",
        ),
        (
            "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03 --> 00:00:04,000\nbad\n",
            6,
            "malformed timing",
        ),
        ("1\n00:00:05,000 --> 00:00:02,000\nbackwards\n", 2, "before it starts"),
        (
            "1\n00:00:01,000 --> 00:00:02,000\n\n2\n00:00:03,000 --> 00:00:04,000\nok\n",
            1,
            "no text",
        ),
        (
            "1\n00:00:01,000 --> 00:00:02,000\na\n\n1\n00:00:03,000 --> 00:00:04,000\nb\n",
            5,
            "does not increase",
        ),
        (
            "1\n00:00:05,000 --> 00:00:06,000\na\n\n2\n00:00:01,000 --> 00:00:02,000\nb\n",
            6,
            "starts before",
        ),
        ("\n\n", 1, "no subtitle cues"),
    ],
)
def test_malformed_srt_names_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        demo.parse_srt(text, "broken.srt")
    message = str(info.value)
    assert message.startswith(f"broken.srt:{line}:"), message
    assert fragment in message


def test_cue_windows_have_three_to_five_cues(shipped_cues: list[demo.Cue]) -> None:
    windows = demo.group_cues(shipped_cues)
    assert [c for w in windows for c in w] == shipped_cues
    assert all(3 <= len(w) <= 5 for w in windows), [len(w) for w in windows]


def test_group_cues_merges_short_tail() -> None:
    cues = [demo.Cue(i, float(i * 10), i * 10 + 2.0, "word") for i in range(1, 8)]
    sizes = [len(w) for w in demo.group_cues(cues)]
    assert sizes == [
        3,
        4,
    ]  # every pause is >= 5 s, so windows close at the minimum; tail of 1 merged


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "00:00:00"),
        (59.999, "00:00:59"),
        (602.14, "00:10:02"),
        (3600, "01:00:00"),
        (36061.5, "10:01:01"),
    ],
)
def test_seconds_to_hms(seconds: float, expected: str) -> None:
    assert demo.seconds_to_hms(seconds) == expected


def test_seconds_to_hms_rejects_negative() -> None:
    with pytest.raises(ValueError):
        demo.seconds_to_hms(-1)


# ---------------------------------------------------------------- FAQ, notes, dialogues


def test_parse_faq_pairs_and_continuation() -> None:
    text = "# FAQ\n\nQ: first?\nA: one\ncontinued.\n\nQ: 第二？\nA: 二。\n"
    assert demo.parse_faq(text, "f.md") == [("first?", "one continued."), ("第二？", "二。")]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("Q: one?\nA: yes\n\nQ: two?\n\nQ: three?\nA: x\n", 4, "no answer"),
        ("Q: one?\nA: yes\n\nQ: dangling?\n", 4, "no answer"),
        ("A: orphan\n", 1, "without a preceding"),
        ("Q: one?\nA: yes\nA: again\n", 3, "without a preceding"),
        ("Q: one?\nA: yes\n\nstray text\n", 4, "unexpected text"),
        ("Q:\nA: yes\n", 1, "empty question"),
    ],
)
def test_malformed_faq_names_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        demo.parse_faq(text, "faq.md")
    message = str(info.value)
    assert message.startswith(f"faq.md:{line}:"), message
    assert fragment in message


def test_notes_sections_have_heading_paths() -> None:
    for name, _lang in demo.NOTES_FILES:
        sections = demo.parse_notes((demo.COURSE_DIR / name).read_text(encoding="utf-8"), name)
        assert len(sections) >= 6
        for section in sections:
            assert len(section.path) == 2
            assert 2 <= len(section.keypoints) <= 4
            assert "```" not in section.body and section.summary not in section.body


def test_notes_missing_keypoints_and_unclosed_fence() -> None:
    missing = "# T\n\n## S\nbody\n```summary\ns\n```\n"
    with pytest.raises(ValueError, match=r"^n\.md:3: .*keypoints"):
        demo.parse_notes(missing, "n.md")
    unclosed = "# T\n\n## S\nbody\n```keypoints\n- a\n- b\n"
    with pytest.raises(ValueError, match=r"^n\.md:5: .*never closed"):
        demo.parse_notes(unclosed, "n.md")


def test_dialogue_must_alternate() -> None:
    bad = "## D\nUser: hi\nUser: again\n"
    with pytest.raises(ValueError, match=r"^d\.md:3: "):
        demo.parse_dialogues(bad, "d.md")
    no_reply = "## D\nUser: hi\n"
    with pytest.raises(ValueError, match=r"^d\.md:1: .*end with"):
        demo.parse_dialogues(no_reply, "d.md")


# --------------------------------------------------------------------------- records


def test_records_follow_contract(records: list[dict[str, Any]]) -> None:
    problems = {i: errs for i, r in enumerate(records) if (errs := _contract_errors(r))}
    assert not problems


def test_record_counts_and_kinds(records: list[dict[str, Any]]) -> None:
    assert 60 <= len(records) <= 120
    kinds = Counter(r["meta"]["kind"] for r in records)
    assert kinds["extract"] == kinds["summary"] >= 12
    assert 12 <= sum(r["meta"]["source"] == "faq.md" for r in records) <= 20
    assert 6 <= kinds["refusal"] <= 10
    assert all(
        r["meta"]["source"] == "refusals.md" for r in records if r["meta"]["kind"] == "refusal"
    )
    multi = [r for r in records if "conversations" in r and len(r["conversations"]) >= 4]
    assert 1 <= len(multi) <= 2
    for record in records:
        is_notes = record["meta"]["source"].startswith("notes_")
        assert ("instruction" in record) == is_notes
        assert (record["meta"]["timestamp"] is not None) == (record["meta"]["source"] == SRT_NAME)


def test_outputs_are_short(records: list[dict[str, Any]]) -> None:
    for record in records:
        for text in _outputs(record):
            cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
            words = len(re.sub(r"[\u4e00-\u9fff]", " ", text).split())
            assert words < 80 and cjk < 120, text


def test_demo_question_is_answered(records: list[dict[str, Any]]) -> None:
    hits = [
        r
        for r in records
        if "conversations" in r and r["conversations"][0]["content"] == demo.DEMO_QUESTION
    ]
    assert len(hits) == 1
    answer = hits[0]["conversations"][1]["content"].lower()
    assert hits[0]["meta"] == {"source": "faq.md", "timestamp": None, "kind": "answer"}
    assert "step size" in answer and "gradient" in answer


def test_lecture_records_cite_their_timestamp(
    records: list[dict[str, Any]], shipped_cues: list[demo.Cue]
) -> None:
    lecture = [r for r in records if r["meta"]["source"] == SRT_NAME]
    windows = demo.group_cues(shipped_cues)
    assert len(lecture) == len(windows)
    for record, window in zip(lecture, windows, strict=True):
        stamp = record["meta"]["timestamp"]
        assert stamp == demo.seconds_to_hms(window[0].start)
        assert record["meta"]["kind"] == "answer"
        assert stamp in record["conversations"][0]["content"]
        assert stamp in record["conversations"][1]["content"]
        assert window[0].text in record["conversations"][1]["content"]


def test_output_is_byte_identical(tmp_path: Path) -> None:
    first = demo.write_sft(demo.build_demo_records(), tmp_path / "a")
    second = demo.write_sft(demo.build_demo_records(), tmp_path / "b")
    assert first == tmp_path / "a" / "sft.jsonl"
    data = first.read_bytes()
    assert data == second.read_bytes()
    lines = data.decode("utf-8").splitlines()
    assert len(lines) == len(demo.build_demo_records())
    assert "学习率" in data.decode("utf-8")  # ensure_ascii=False
    for line in lines:
        obj = json.loads(line)
        assert line == json.dumps(obj, ensure_ascii=False, sort_keys=True)


def test_course_is_small_and_licensed() -> None:
    files = [p for p in demo.COURSE_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25_000
    readme = (demo.COURSE_DIR / "README.md").read_text(encoding="utf-8")
    assert "Apache" in readme


def test_demo_module_imports_only_stdlib() -> None:
    tree = ast.parse(Path(demo.__file__).read_text(encoding="utf-8"))
    modules = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


# --------------------------------------------------------------------------- CLI


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ta_data.demo`` with the repository on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "ta_data.demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_writes_sft(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run_cli(f"output={out}")
    assert result.returncode == 0, result.stderr
    path = out / "sft.jsonl"
    assert (
        path.read_bytes()
        == demo.write_sft(demo.build_demo_records(), tmp_path / "ref").read_bytes()
    )
    kinds = Counter(r["meta"]["kind"] for r in demo.build_demo_records())
    for kind, count in kinds.items():
        assert f"{kind}: {count}" in result.stdout
    assert str(path) in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(("outptu=x",), "'outptu'"), (("output",), "key=value"), ((), "output=DIR")],
)
def test_cli_bad_arguments_exit_2(args: tuple[str, ...], fragment: str) -> None:
    result = _run_cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr


def test_rewriting_replaces_the_file_whole_through_a_rename(tmp_path: Path) -> None:
    """Ranks of one run write the same sft.jsonl while others read it: the new file is renamed
    over the old (an open reader keeps reading whole old contents), no temporary is left behind."""
    path = demo.write_sft(demo.build_demo_records(), tmp_path)
    before = path.read_bytes()
    with path.open("rb") as reader:
        inode = os.fstat(reader.fileno()).st_ino
        again = demo.write_sft(demo.build_demo_records(), tmp_path)
        assert reader.read() == before  # not truncated under the reader
    assert again == path and path.read_bytes() == before and path.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl"]
