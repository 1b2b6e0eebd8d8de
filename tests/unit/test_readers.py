"""Stage 1 readers on small real-format samples (tests/data/readers) and generated files."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ta_data.readers import (
    iter_course_dir,
    read_course_file,
    read_markdown,
    read_pdf,
    read_qa,
    read_srt,
    read_text,
    read_vtt,
)
from ta_data.records import Document, QAPair, Reject

DATA = Path(__file__).resolve().parent.parent / "data" / "readers"


def _read(
    reader: Callable[[Path, list[Reject]], Iterator[object]], path: Path
) -> tuple[list, list[Reject]]:
    """Everything ``reader`` yields for ``path``, and the Rejects it appended."""
    rejects: list[Reject] = []
    return list(reader(path, rejects)), rejects


def _where(rejects: list[Reject]) -> list[tuple[int | None, str]]:
    """(line, reason) of each Reject, for compact assertions."""
    return [(reject.line, reject.reason) for reject in rejects]


# --------------------------------------------------------------------------- PDF builder


def _pdf_string(line: str) -> str:
    """Show ``line``: Helvetica for ASCII (no parentheses or backslashes), else 2-byte codes."""
    if line.isascii():
        return f"/F1 12 Tf ({line}) Tj"
    return "/F2 12 Tf <" + "".join(f"{ord(char):04X}" for char in line) + "> Tj"


def _to_unicode(chars: set[str]) -> str:
    """A ToUnicode CMap mapping each 2-byte code to the code point of the same value."""
    entries = "\n".join(f"<{ord(c):04X}> <{ord(c):04X}>" for c in sorted(chars))
    return (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{len(chars)} beginbfchar\n{entries}\nendbfchar\n"
        "endcmap CMapName currentdict /CMap defineresource pop end end"
    )


def write_pdf(path: Path, pages: list[list[str]]) -> None:
    """Hand-build a PDF whose pages show the given lines (an empty list is a blank page)."""
    chars = {c for page in pages for line in page for c in line if not line.isascii()} or {" "}
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "",  # the page tree, filled in once the page object numbers are known
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        "<< /Type /Font /Subtype /Type0 /BaseFont /Song /Encoding /Identity-H"
        " /DescendantFonts [5 0 R] /ToUnicode 6 0 R >>",
        "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /Song"
        " /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> >>",
        _stream(_to_unicode(chars)),
    ]
    kids = []
    for page in pages:
        shown = [f"BT 20 {180 - 20 * i} Td {_pdf_string(line)} ET" for i, line in enumerate(page)]
        objects.append(_stream("\n".join(shown)))
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents "
            f"{len(objects)} 0 R /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer << /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)


def _stream(data: str) -> str:
    """A PDF stream object holding ``data``."""
    return f"<< /Length {len(data.encode('latin-1'))} >>\nstream\n{data}\nendstream"


# --------------------------------------------------------------------------- records


def test_reject_to_json_matches_the_rejects_contract() -> None:
    line = Reject("课.srt", 3, "malformed cue timing", {"b": 1, "a": "时间"}).to_json()
    assert line == (
        '{"file": "课.srt", "line": 3, "reason": "malformed cue timing", '
        '"record": {"a": "时间", "b": 1}}'
    )  # keys sorted at every level, CJK kept as is
    assert list(json.loads(line)) == ["file", "line", "reason", "record"]
    assert json.loads(Reject("x.pdf", None, "unreadable PDF", None).to_json())["line"] is None


def test_document_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="kind"):
        Document("text", "a.md", None, None, None, "slides", {})


# --------------------------------------------------------------------------- markdown, text


def test_markdown_sections_carry_their_heading_path() -> None:
    docs, rejects = _read(read_markdown, DATA / "notes_en.md")
    assert rejects == []
    assert [(d.chapter, d.meta["line"]) for d in docs] == [
        (None, 5),
        ("Linear Regression > Least Squares", 9),
        ("Linear Regression > Least Squares > Normal Equations", 18),
        ("Linear Regression > Regularisation", 25),
        ("Appendix", 32),
    ]
    assert docs[0].text == "These notes cover linear regression."  # front matter skipped
    assert "# fit the model (this is not a heading)" in docs[1].text
    assert docs[1].text.endswith("beta = solve(X.T @ X, X.T @ y)\n```")
    assert docs[2].text == (
        "Setting the gradient to zero gives the normal equations.\n\n"
        "Second paragraph after two blank lines."
    )
    assert docs[3].text.startswith("~~~\n## not a heading either\n~~~")
    assert {(d.kind, d.start, d.end, d.source) for d in docs} == {
        ("notes", None, None, (DATA / "notes_en.md").as_posix())
    }


def test_markdown_chinese_headings() -> None:
    docs, _ = _read(read_markdown, DATA / "notes_zh.md")
    assert [(d.chapter, d.text) for d in docs] == [
        ("第三讲 线性回归 > 最小二乘法", "我们最小化残差平方和。"),
        ("第三讲 线性回归 > 最小二乘法 > 正规方程", "令梯度为零，得到正规方程。"),
        ("第三讲 线性回归 > 正则化", "岭回归加入一个惩罚项。"),
    ]


def test_text_paragraphs() -> None:
    docs, rejects = _read(read_text, DATA / "notes.txt")
    assert rejects == []
    assert [(d.text, d.meta["line"], d.chapter, d.kind) for d in docs] == [
        ("Course logistics.\nOffice hours are on Tuesday.", 1, None, "text"),
        ("课程安排：每周二答疑。", 4, None, "text"),
        ("Final paragraph.", 7, None, "text"),
    ]


# --------------------------------------------------------------------------- transcripts


def test_srt_cues_with_exact_seconds_and_rejected_cues() -> None:
    docs, rejects = _read(read_srt, DATA / "lecture_en.srt")
    assert [(d.start, d.end, d.text, d.meta["cue"]) for d in docs] == [
        (1.0, 4.5, "Welcome to lecture three.", 1),
        (83.456, 85.789, "Today we cover least squares.", 2),
        (3600.001, 3602.25, "See you next time.", 5),
    ]
    assert {(d.kind, d.chapter) for d in docs} == {("transcript", None)}
    assert _where(rejects) == [
        (11, "malformed cue timing '00:01:26,000 -> 00:01:28,000'"),
        (15, "cue ends at 119.0 s, not after its start 120.0 s"),
    ]
    assert rejects[0].record.startswith("3\n") and rejects[0].file.endswith("lecture_en.srt")


def test_srt_chinese_lines_join_without_spaces() -> None:
    docs, rejects = _read(read_srt, DATA / "lecture_zh.srt")
    assert [d.text for d in docs] == ["大家好，欢迎来到第三讲。", "今天讲 least squares 方法。"]
    assert [(d.start, d.end) for d in docs] == [(0.5, 3.0), (3.2, 6.0)]
    assert _where(rejects) == [(11, "cue has no timing line (no '-->')")]


def test_srt_crlf_and_bom_keep_line_numbers(tmp_path: Path) -> None:
    text = (DATA / "lecture_en.srt").read_text(encoding="utf-8")
    path = tmp_path / "crlf.srt"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    docs, rejects = _read(read_srt, path)
    assert [d.start for d in docs] == [1.0, 83.456, 3600.001]
    assert [r.line for r in rejects] == [11, 15]


def test_vtt_quirks() -> None:
    docs, rejects = _read(read_vtt, DATA / "lecture.vtt")
    assert [(d.start, d.end, d.text) for d in docs] == [
        (1.0, 4.0, "Welcome & hello."),  # MM:SS.mmm, cue settings, <v>, entity
        (5.25, 7.5, "Gradient descent step."),  # <c.x> and inline timestamp stripped
        (10.0, 12.0, "老师，这个怎么算？"),  # <v.class Name>, <i>
        (3723.004, 3725.0, "Long lecture, hours without padding."),
    ]
    assert [d.meta.get("speaker") for d in docs] == ["Prof. Li", None, "Student", None]
    assert [d.meta["cue"] for d in docs] == ["intro", None, None, None]
    assert [d.meta["line"] for d in docs] == [11, 15, 22, 26]
    assert _where(rejects) == [(19, "malformed cue timing '00:08.000 --> 00:0x.500'")]


def test_vtt_needs_its_header(tmp_path: Path) -> None:
    path = tmp_path / "no_header.vtt"
    path.write_text("00:01.000 --> 00:02.000\nhello\n", encoding="utf-8")
    docs, rejects = _read(read_vtt, path)
    assert docs == [] and _where(rejects) == [(None, "not WebVTT: first line is not 'WEBVTT'")]


def test_vtt_cue_glued_to_the_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "glued.vtt"
    path.write_text("WEBVTT\n00:01.000 --> 00:02.000\nlost\n\n00:03.000 --> 00:04.000\nkept\n")
    docs, rejects = _read(read_vtt, path)
    assert [d.text for d in docs] == ["kept"]
    assert _where(rejects) == [(1, "cue timing inside the header (no blank line after WEBVTT)")]


def test_vtt_cue_ending_before_start_and_empty_cue(tmp_path: Path) -> None:
    path = tmp_path / "bad.vtt"
    path.write_text(
        "WEBVTT\n\n00:05.000 --> 00:04.000\nbackwards\n\n1\n00:06.000 --> 00:07.000\n<i></i>\n\n"
        "00:08.000 --> 00:09.000\nkept\n",
        encoding="utf-8",
    )
    docs, rejects = _read(read_vtt, path)
    assert [d.text for d in docs] == ["kept"]
    assert _where(rejects) == [
        (3, "cue ends at 4.0 s, not after its start 5.0 s"),
        (6, "cue has no text"),
    ]


# --------------------------------------------------------------------------- PDF


def test_pdf_one_document_per_page(tmp_path: Path) -> None:
    path = tmp_path / "slides.pdf"
    write_pdf(path, [["Gradient descent", "takes small steps."], [], ["梯度下降法"]])
    docs, rejects = _read(read_pdf, path)
    assert [(d.meta, d.kind, d.chapter) for d in docs] == [
        ({"page": 1}, "pdf", None),
        ({"page": 3}, "pdf", None),
    ]
    assert "Gradient descent" in docs[0].text and "takes small steps." in docs[0].text
    assert docs[1].text == "梯度下降法"
    assert _where(rejects) == [(None, "page 2: no extractable text")]


def test_broken_pdf_is_one_reject(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\nthis is not really a PDF\n")
    docs, rejects = _read(read_pdf, path)
    assert docs == [] and len(rejects) == 1
    assert rejects[0].line is None and rejects[0].reason.startswith("unreadable PDF")


# --------------------------------------------------------------------------- QA


def test_qa_markdown_zh_en() -> None:
    pairs, rejects = _read(read_qa, DATA / "faq.md")
    assert [(p.line, p.question, p.answer) for p in pairs] == [
        (5, "When are office hours?", "Tuesdays 14:00-16:00.\nRoom 301."),
        (9, "Is the exam open book?", "No."),
        (14, "什么是梯度？", "梯度是偏导数组成的向量。\n\n它指向函数增长最快的方向。"),
        (19, "How do I compute it in numpy?",
         "Use this:\n\n```python\n# not a heading: a comment in the answer\n"
         "grad = 2 * X.T @ (X @ w - y)\n```"),
        (29, "Last one?", "Yes."),
    ]
    chapters = ["Course FAQ > Logistics"] * 2 + ["Course FAQ > 数学"] * 3
    assert [p.meta["chapter"] for p in pairs] == chapters
    assert _where(rejects) == [(27, "question without an answer")]


def test_qa_text_orphans_and_stray_lines(tmp_path: Path) -> None:
    path = tmp_path / "faq.txt"
    text = "intro line\nA: orphan answer\n\nQ：全角冒号？\nA：可以。\nQ: dangling\n"
    path.write_text(text, encoding="utf-8")
    pairs, rejects = _read(read_qa, path)
    assert [(p.question, p.answer, p.line, p.meta) for p in pairs] == [("全角冒号？", "可以。", 4, {})]
    assert _where(rejects) == [
        (1, "text outside a Q:/A: pair"),
        (2, "answer without a question"),
        (6, "question without an answer"),
    ]


def test_qa_jsonl_field_names_and_bad_lines() -> None:
    pairs, rejects = _read(read_qa, DATA / "qa.jsonl")
    assert [(p.line, p.question, p.answer, p.meta) for p in pairs] == [
        (1, "What is a residual?", "Observed minus predicted.", {"lang": "en"}),
        (2, "什么是残差？", "观测值减去预测值。", {"source": "forum", "week": 3}),
        (4, "Explain ridge regression\nin one sentence", "Least squares plus an L2 penalty.", {}),
    ]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [
        (5, "invalid JSON"),
        (6, "no non-empty text fields question/answer, q/a, instruction/output"),
        (7, "not a JSON object"),
        (8, "empty answer"),
    ]


def test_qa_csv_rows_and_lines() -> None:
    pairs, rejects = _read(read_qa, DATA / "qa.csv")
    assert [(p.line, p.question, p.answer, p.meta) for p in pairs] == [
        (2, "What is MSE?", "Mean squared error.", {"tags": "metrics"}),
        (3, "What is R², in words?", "The share of variance\nexplained by the model.",
         {"tags": "metrics"}),
        (7, "什么是过拟合？", "模型记住了训练噪声。", {"tags": "概念"}),
    ]
    assert _where(rejects) == [(5, "expected 3 columns, got 4"), (6, "empty answer")]


def test_qa_csv_without_question_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("prompt,reply\nhi,hello\n", encoding="utf-8")
    pairs, rejects = _read(read_qa, path)
    assert pairs == [] and _where(rejects) == [(None, "CSV header has no question/answer columns")]


# --------------------------------------------------------------------------- files, folders


@pytest.mark.parametrize(
    "name", ["notes.md", "talk.srt", "talk.vtt", "notes.txt", "faq.md", "log.jsonl"]
)
def test_non_utf8_file_is_rejected_whole(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes("# 第一章\n\n问：什么？\n答：梯度。\n".encode("gbk"))
    reader = read_qa if name.startswith(("faq", "log")) else read_course_file
    records, rejects = _read(reader, path)
    assert records == [] and len(rejects) == 1
    assert rejects[0].line is None and rejects[0].reason.startswith("not UTF-8: byte 0x")


def test_course_dir_sorted_dispatch_and_unsupported(tmp_path: Path) -> None:
    for name in ("lecture_zh.srt", "notes_zh.md", "lecture.vtt", "qa.csv"):
        shutil.copy(DATA / name, tmp_path / name)
    (tmp_path / "week2").mkdir()
    shutil.copy(DATA / "notes.txt", tmp_path / "week2" / "NOTES.TXT")
    write_pdf(tmp_path / "a_slides.pdf", [["Slide one"]])
    docs, rejects = _read(iter_course_dir, tmp_path)
    order = [Path(d.source).relative_to(tmp_path).as_posix() for d in docs]
    assert list(dict.fromkeys(order)) == [
        "a_slides.pdf", "lecture.vtt", "lecture_zh.srt", "notes_zh.md", "week2/NOTES.TXT"
    ]
    assert [d.kind for d in docs][:2] == ["pdf", "transcript"] and docs[-1].kind == "text"
    assert [(Path(r.file).name, r.line, r.reason) for r in rejects] == [
        ("lecture.vtt", 19, "malformed cue timing '00:08.000 --> 00:0x.500'"),
        ("lecture_zh.srt", 11, "cue has no timing line (no '-->')"),
        ("qa.csv", None, "unsupported file type"),
    ]
    with pytest.raises(NotADirectoryError):
        list(iter_course_dir(tmp_path / "missing", []))


def test_reading_is_deterministic() -> None:
    first, first_rejects = _read(iter_course_dir, DATA)
    second, second_rejects = _read(iter_course_dir, DATA)
    assert first == second and first_rejects == second_rejects
    assert [r.to_json() for r in first_rejects] == [r.to_json() for r in second_rejects]
    assert all(isinstance(d, Document) for d in first)
    names = ("faq.md", "qa.jsonl", "qa.csv")
    pairs = [p for name in names for p in read_qa(DATA / name, [])]
    assert all(isinstance(p, QAPair) for p in pairs)
    assert pairs == [p for name in names for p in read_qa(DATA / name, [])]
