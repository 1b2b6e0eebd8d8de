"""PII stage: each kind in zh and en, the regex traps (CJK next to digits, full-width, ＠ / [at]),
ID-card checksums, keyword and roster student IDs, cue-based names with course terms kept,
per-document name numbering, and numbers that are not PII."""
from __future__ import annotations


import pytest

from ta_data.pii import Roster, RosterError, find_pii, fold_width, id_card_valid, load_roster, scrub


def kinds(text: str, roster: Roster | None = None) -> list[tuple[str, str]]:
    """(kind, matched text) of every span, in order."""
    return [(s.kind, s.text) for s in find_pii(text, roster)]


@pytest.mark.parametrize(
    "text, phone",
    [
        ("请联系 +86 138-1234-5678。", "+86 138-1234-5678"),
        ("电话13812345678联系助教", "13812345678"),  # CJK right before and after the digits
        ("手机：１３８１２３４５６７８。", "１３８１２３４５６７８"),  # full-width digits
        ("Call 0086 139 1234 5678 for help.", "0086 139 1234 5678"),
        ("Call (+86)15912345678 today", "(+86)15912345678"),
        ("号码是+8618612345678", "+8618612345678"),
    ],
)
def test_mobile_numbers(text, phone):
    assert kinds(text) == [("PHONE", phone)]


@pytest.mark.parametrize(
    "text, landline",
    [
        ("办公室电话 010-62751234，欢迎来电", "010-62751234"),
        ("Office: (0755) 8888 1234.", "(0755) 8888 1234"),
        ("座机0755-86001234转8001。", "0755-86001234转8001"),
        ("客服400-810-8888", "400-810-8888"),
        ("电话01062751234", "01062751234"),  # bare only after a telephone keyword
    ],
)
def test_landlines(text, landline):
    assert kinds(text) == [("LANDLINE", landline)]


@pytest.mark.parametrize(
    "text, email",
    [
        ("作业请发到邮箱zhang.wei@pku.edu.cn，谢谢。", "zhang.wei@pku.edu.cn"),
        ("邮箱：lm2021＠163.com 。", "lm2021＠163.com"),
        ("Email ta.help [at] mails.tsinghua.edu.cn with questions.", "ta.help [at] mails.tsinghua.edu.cn"),
        ("Email j.smith at stu dot ecnu dot edu dot cn please", "j.smith at stu dot ecnu dot edu dot cn"),
        ("发到13812345678@qq.com即可", "13812345678@qq.com"),  # one EMAIL, not a PHONE inside it
    ],
)
def test_emails(text, email):
    assert kinds(text) == [("EMAIL", email)]


def test_id_cards_need_a_valid_checksum_and_date():
    assert id_card_valid("11010519491231002X")
    assert id_card_valid("11010519491231002x")
    assert not id_card_valid("110105194912310021")  # wrong check character
    assert not id_card_valid("110105199902300014")  # 30 February
    assert kinds("身份证号11010519491231002X，请核对") == [("ID_CARD", "11010519491231002X")]
    assert kinds("证件号 110105 19491231 002X。") == [("ID_CARD", "110105 19491231 002X")]
    assert kinds("身份证号110105194912310021，请核对") == []


@pytest.mark.parametrize(
    "text, ids",
    [
        ("学号 2021123456", ["2021123456"]),
        ("学号2021123456的同学请注意", ["2021123456"]),
        ("学号是PB20000001。", ["PB20000001"]),
        ("Student ID: 2021123456.", ["2021123456"]),
        ("my student number is 20190042", ["20190042"]),
        ("学号：2021001、2021002", ["2021001", "2021002"]),
    ],
)
def test_student_ids_after_a_keyword(text, ids):
    assert kinds(text) == [("STUDENT_ID", i) for i in ids]


def test_bare_numbers_are_student_ids_only_when_in_the_roster():
    text = "名单 2021123456 已提交，共 2021123457 条记录。"
    assert kinds(text) == []
    assert kinds(text, Roster(student_ids=frozenset({"2021123456"}))) == [("STUDENT_ID", "2021123456")]


@pytest.mark.parametrize(
    "text",
    [
        "2024年的期中考试在第12周。",
        "阿伏伽德罗常数 6.02214076e23，光速 299792458 m/s，k = 1.380649e-23。",
        "时间戳 202401011230 和 1700000000123，日期 20240315。",
        "pi = 3.14159265358, 2^31 = 2147483648, ISBN 9787111213826, 12,345,678",
        "See the docs at numpy.org and look at this dot product.",
    ],
)
def test_numbers_and_text_that_are_not_pii(text):
    assert kinds(text) == []


def test_chinese_names_with_cues_and_course_terms_kept():
    text = "王小明同学的作业已批改。李老师说牛顿第二定律和高斯分布很重要，张量也是。牛顿认为如此。"
    result = scrub(text)
    assert result.text == "<NAME_1>同学的作业已批改。<NAME_2>老师说牛顿第二定律和高斯分布很重要，张量也是。牛顿认为如此。"
    assert [s.text for s in result.spans] == ["王小明", "李"]


@pytest.mark.parametrize(
    "text, names",
    [
        ("助教韦鹏玉老师今天答疑。", ["韦鹏玉"]),
        ("请王小明回答第三题。", ["王小明"]),
        ("小组成员：谭梓艳、戴刚。", ["谭梓艳", "戴刚"]),
        ("。李华和张敏同学一组", ["李华", "张敏"]),
        ("昨天司马浩宁同学交了报告", ["司马浩宁"]),
        ("班主任王伟老师和高中同学以及全体同学，任课老师也来了。", ["王伟"]),
        ("感谢刘洋的帮助。", ["刘洋"]),
    ],
)
def test_chinese_name_contexts(text, names):
    assert [t for k, t in kinds(text) if k == "NAME"] == names


def test_same_name_gets_the_same_placeholder_within_a_document():
    result = scrub("王小明同学问：为什么？李华同学答了。王小明说：谢谢。")
    assert result.text == "<NAME_1>同学问：为什么？<NAME_2>同学答了。<NAME_1>说：谢谢。"
    assert result.counts["NAME"] == 3
    assert scrub("李华同学来了。").text == "<NAME_1>同学来了。"  # numbering restarts per document


@pytest.mark.parametrize(
    "text, names",
    [
        ("Prof. John Smith will cover chapter 3.", ["John Smith"]),
        ("Hi Emily, your grade is posted.", ["Emily"]),
        ("Hello everyone, my name is Grace Hopper.", ["Grace Hopper"]),
        ("The student Laura Clark missed class.", ["Laura Clark"]),
        ("Notes taken by David Miller.", ["David Miller"]),
        ("Yesterday Kevin Brown asked about the midterm.", ["Kevin Brown"]),
        ("Hi All, as Newton said, by Monday. As Newton said, it works.", []),
        ("The Taylor series and Bayes rule; Prof. Taylor explains.", ["Taylor"]),
    ],
)
def test_english_names_by_cue(text, names):
    assert [t for k, t in kinds(text) if k == "NAME"] == names


def test_english_surname_reuses_the_full_name_number():
    result = scrub("Prof. John Smith teaches. Hi Emily, Dr. Smith will reply.")
    assert result.text == "Prof. <NAME_1> teaches. Hi <NAME_2>, Dr. <NAME_1> will reply."


def test_scrub_counts_every_kind_and_spans_do_not_overlap():
    text = "学号 2021123456，王小明同学，电话 138 1234 5678，邮箱 a.b＠pku.edu.cn，身份证 11010519491231002X"
    result = scrub(text)
    assert result.text == "学号 <STUDENT_ID>，<NAME_1>同学，电话 <PHONE>，邮箱 <EMAIL>，身份证 <ID_CARD>"
    assert result.counts == {"ID_CARD": 1, "EMAIL": 1, "STUDENT_ID": 1, "PHONE": 1, "LANDLINE": 0, "NAME": 1}
    ends = [(s.start, s.end) for s in result.spans]
    assert ends == sorted(ends) and all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
    assert all(text[s.start : s.end] == s.text for s in result.spans)


def test_fold_width_keeps_offsets():
    text = "电话：１３８－１２３４　５６７８＠ＡＢＣ—x"
    folded = fold_width(text)
    assert len(folded) == len(text) and folded == "电话:138-1234 5678@ABC-x"


def test_roster_csv_with_header_and_txt(tmp_path):
    csv_path = tmp_path / "roster.csv"
    csv_path.write_text("name,student_id\n王小明,2021123456\nJohn Smith,PB20000001\n\n# left\n2021000001\n", "utf-8")
    roster = load_roster(csv_path)
    assert roster.names == {"王小明", "John Smith"}
    assert roster.student_ids == {"2021123456", "PB20000001", "2021000001"}
    txt_path = tmp_path / "roster.txt"
    txt_path.write_text("李华\t2022000002\n张敏\n", "utf-8")
    assert load_roster(txt_path) == Roster(frozenset({"李华", "张敏"}), frozenset({"2022000002"}))
    text = "今天李华和John Smith都提交了，2022000002 已登记。"
    assert scrub(text, load_roster(txt_path)).text == "今天<NAME_1>和John Smith都提交了，<STUDENT_ID> 已登记。"


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("王小明,2021123456,extra\n", 1, "got 3 fields"),
        ("name,student_id\n王小明,李华\n", 2, "one name and/or one student ID"),
        ("王小明,2021123456\n2021,2022\n", 2, "one name and/or one student ID"),
        ("王小明\n3rd-row!\n", 2, "neither a name nor a student ID"),
    ],
)
def test_malformed_roster_rows_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "r.txt"
    path.write_text(content, "utf-8")
    with pytest.raises(RosterError, match=rf"r\.txt:{line}: .*{message}"):
        load_roster(path)
