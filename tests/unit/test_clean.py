"""Clean stage: width folding with Chinese punctuation kept, whitespace rules, optional ftfy/opencc
(skipped when absent), boilerplate lines in zh/en with course content kept, confidentiality
markings vs course words, sensitive words, determinism, and a light import."""
from __future__ import annotations


import pytest

from ta_data import clean
from ta_data.clean import (
    CleanConfig,
    clean_document,
    fix_mojibake,
    is_confidential,
    load_sensitive_words,
    normalize_whitespace,
    normalize_width,
    sensitive_hits,
    strip_boilerplate,
    to_simplified,
)


def test_width_folds_letters_digits_symbols():
    assert normalize_width("ＡＢＣ ａｂｃ １２３ ＋－％＄") == "ABC abc 123 +-%$"
    assert normalize_width("学习率＝０．０１") == "学习率=0.01"
    assert normalize_width("x² ① …") == "x² ① …"  # only width forms are touched


def test_width_keeps_chinese_punctuation_in_chinese_text():
    zh = "学习率（learning rate）很重要，对吗？是的！注意：步长；“引号”。"
    assert normalize_width(zh) == zh
    assert normalize_width("设ｘ，ｙ为实数。") == "设x，y为实数。"
    assert normalize_width("Use Adam，then SGD（maybe）") == "Use Adam,then SGD(maybe)"  # no CJK on the line
    assert normalize_width(zh, keep_cjk_punct=False) == "学习率(learning rate)很重要,对吗?是的!注意:步长;“引号”。"
    assert normalize_width("第一行，\nEnglish，line") == "第一行，\nEnglish,line"


def test_whitespace_rules():
    raw = "\ufeffa  b\t\tc   \r\n\r\n\r\n\r\n  indented\u200b code  \n\u3000\u3000\n\nend\u200d\n\n"
    assert normalize_whitespace(raw) == "a b c\n\n  indented code\n\nend"
    assert normalize_whitespace("  x  y ", keep_indent=False) == "x y"
    assert normalize_whitespace("a\x0cb\rc") == "a\nb\nc"
    assert normalize_whitespace("") == ""


def test_mojibake():
    pytest.importorskip("ftfy")
    assert fix_mojibake("cafÃ©") == ("café", True)
    assert fix_mojibake("学习率（lr）“好”") == ("学习率（lr）“好”", False)  # width and quotes untouched


def test_mojibake_without_ftfy(monkeypatch):
    monkeypatch.setattr(clean, "_ftfy", lambda: None)
    assert fix_mojibake("cafÃ©") == ("cafÃ©", None)
    res = clean_document("cafÃ© 很好", CleanConfig(to_simplified=False))
    assert res.text == "cafÃ© 很好" and res.skipped == ("fix_mojibake: ftfy not installed",)


def test_traditional_to_simplified():
    pytest.importorskip("opencc")
    if not clean.opencc_available():
        pytest.skip("opencc installed but t2s config does not load")
    assert to_simplified("學習率") == ("学习率", True)
    assert to_simplified("學習率", enabled=False) == ("學習率", False)
    assert clean_document("學習率").flags["t2s"] is True


def test_t2s_without_opencc(monkeypatch):
    monkeypatch.setattr(clean, "_t2s", lambda: None)
    assert to_simplified("學習率") == ("學習率", None)
    assert "to_simplified: opencc not installed" in clean_document("學習率").skipped


ZH_DOC = """第三章 知识产权
本章讨论著作权法：版权保护作品的表达而非思想，版权所有人享有复制权。
微信支付的架构是本课的案例，用户扫码支付后系统回调。
关注公众号「AI课堂」获取更多资料
扫码加入学习群
版权所有 © 2023 某某教育
转载请注明出处
微信：abc_12345
结束。"""

EN_DOC = """Chapter 3: Copyright law
Copyright law protects the expression of ideas, not the ideas themselves.
In the observer pattern, clients subscribe to events.
Copyright © 2023 Example University. All rights reserved.
Subscribe to our channel for more videos!
Downloaded from https://example.com/notes on 12 May 2023
Scanned by CamScanner
The end."""


def test_boilerplate_zh_removed_course_content_kept():
    text, removed = strip_boilerplate(ZH_DOC)
    assert removed == [
        "关注公众号「AI课堂」获取更多资料",
        "扫码加入学习群",
        "版权所有 © 2023 某某教育",
        "转载请注明出处",
        "微信：abc_12345",
    ]
    assert "版权保护作品的表达" in text and "版权所有人享有复制权" in text
    assert "微信支付的架构" in text and "第三章" in text and text.endswith("结束。")


def test_boilerplate_en_removed_course_content_kept():
    text, removed = strip_boilerplate(EN_DOC)
    assert len(removed) == 4 and all(r in EN_DOC for r in removed)
    assert text.splitlines() == [
        "Chapter 3: Copyright law",
        "Copyright law protects the expression of ideas, not the ideas themselves.",
        "In the observer pattern, clients subscribe to events.",
        "The end.",
    ]


def test_boilerplate_case_insensitive_width_and_custom_patterns():
    assert strip_boilerplate("ALL RIGHTS RESERVED\nkeep")[0] == "keep"
    assert strip_boilerplate("ａｌｌ ｒｉｇｈｔｓ ｒｅｓｅｒｖｅｄ\nkeep")[0] == "keep"
    assert strip_boilerplate("foo bar\nkeep", ["^foo"]) == ("keep", ["foo bar"])
    long_line = "关注公众号" + "很长的正文内容" * 40  # a paragraph, not a boilerplate line
    assert strip_boilerplate(long_line)[1] == []


@pytest.mark.parametrize(
    "text, marker",
    [
        ("【内部资料】\n第一章 梯度下降", "内部资料"),
        ("密级：秘密\n正文", "秘密"),
        ("绝密★启用前\n2024年考试", "绝密"),
        ("机密★10年\n正文", "机密"),
        ("內部資料 請勿外傳\n正文", "內部資料"),
        ("Notes\nCONFIDENTIAL\nBody", "CONFIDENTIAL"),
        ("confidential", "CONFIDENTIAL"),
        ("CONFIDENTIAL: draft for the review board", "CONFIDENTIAL"),
        ("Internal Use Only - Do Not Distribute", "Internal use only"),
        ("*do not distribute*", "Do not distribute"),
        ("Classification: Confidential. Owner: Ops", "CONFIDENTIAL"),
    ],
)
def test_confidential_detected(text, marker):
    assert is_confidential(text) == marker


@pytest.mark.parametrize(
    "text",
    [
        "信息安全的三要素：机密性、完整性和可用性。",
        "## 机密性",
        "秘密共享（secret sharing）把秘密分成若干份。",
        "Confidential computing protects data in use.",
        "This API is for internal use only.",
        "Students may not distribute the exam.",
    ],
)
def test_course_words_not_confidential(text):
    assert is_confidential(text) is None


def test_confidential_rejects_document_and_custom_markers():
    res = clean_document("内部资料\n第一章 学习率")
    assert res.rejected_reason == "confidential: 内部资料"
    assert is_confidential("TOP SECRET-ISH", ["Internal"]) is None
    assert is_confidential("Internal", ["Internal"]) == "Internal"
    assert clean_document("内部资料\n正文", CleanConfig(confidential_markers=())).rejected_reason is None


def test_sensitive_words(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# my list\n违禁词\nBadWord\nass\n\n", encoding="utf-8")
    words = load_sensitive_words(path)
    assert words == ("违禁词", "BadWord", "ass")
    assert sensitive_hits("这是违禁词和ｂａｄｗｏｒｄ，还有违禁词", words) == ["违禁词", "BadWord"]
    assert sensitive_hits("class assignment", words) == []  # whole Latin words only
    assert sensitive_hits("anything", []) == []
    res = clean_document("正文含违禁词。", CleanConfig(sensitive_words=words))
    assert res.rejected_reason == "sensitive: 违禁词" and res.sensitive_hits == ("违禁词",)
    kept = clean_document("正文含违禁词。", CleanConfig(sensitive_words=words, reject_sensitive=False))
    assert kept.rejected_reason is None and kept.sensitive_hits == ("违禁词",)


def test_clean_document_end_to_end():
    res = clean_document(ZH_DOC.replace("第三章", "第３章\u200b  ") + "\n\n\n")
    assert res.rejected_reason is None
    assert res.text.startswith("第3章 知识产权\n") and "\n\n" not in res.text
    assert len(res.removed_lines) == 5
    assert set(res.flags) == {"mojibake_fixed", "t2s"}
    assert clean_document("关注公众号xx\n\n").rejected_reason == "empty after cleaning"


def test_deterministic():
    a = [clean_document(ZH_DOC), clean_document(EN_DOC)]
    b = [clean_document(ZH_DOC), clean_document(EN_DOC)]
    assert a == b
