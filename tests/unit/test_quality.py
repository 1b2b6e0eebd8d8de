"""Quality stage: units in zh/en/mixed text, too-short texts, noise scores (OCR line breaks,
symbol soup, repeated lines and n-grams), script-ratio language detection, the optional lingua
fallback, the keep/drop verdict, and that importing the module pulls in neither torch nor lingua."""
from __future__ import annotations


import pytest

from ta_data import quality
from ta_data.quality import (
    GarbleThresholds,
    count_units,
    detect_language,
    filter_document,
    is_garbled,
    noise_scores,
    too_short,
)

ZH = "学习率控制每一步的步长。学习率太大，损失会震荡甚至发散；太小，训练会很慢。"
EN = "The learning rate controls the size of each step. If it is too large, the loss diverges."
MIXED = "我们用 Adam optimizer 和 cosine schedule 训练 model，learning rate 设为 3e-4。"
OCR = (
    "Gradient descent updates the para-\n"
    "meters in the direction that lowers the\n"
    "loss. The step size is set by the learn\n"
    "ing rate, which must be chosen with care.\n"
    "A large value makes the\n"
    "loss oscillate."
)


@pytest.mark.parametrize(
    "text, units",
    [
        ("你好", 2),
        ("学习率控制每一步的步长", 11),
        ("hello world", 2),
        ("Don't use state-of-the-art tricks: 3.14 is fine.", 7),
        ("学习率lr控制step size", 8),  # 5 ideographs + lr, step, size; no \b between 率 and lr
        ("", 0),
        ("。，！？ ... ---", 0),
    ],
)
def test_count_units(text, units):
    assert count_units(text) == units


def test_too_short():
    assert too_short("你好")
    assert not too_short("学习率控制每一步的步长")
    assert too_short("hello there world")
    assert not too_short("the learning rate controls step size")
    assert not too_short("你好", min_units=2)


def test_clean_text_scores_low():
    for text in (ZH, EN, MIXED):
        s = noise_scores(text)
        assert s.symbol_ratio < 0.05 and s.repetition == 0.0 and s.broken_line_ratio == 0.0
        assert is_garbled(text) == (False, "")


def test_ocr_broken_lines():
    s = noise_scores(OCR)
    assert s.broken_line_pairs == 5
    assert s.broken_line_ratio == pytest.approx(4 / 5)  # all but the break after "care."
    assert is_garbled(OCR) == (False, "")  # broken lines are not judged by default
    garbled, why = is_garbled(OCR, GarbleThresholds(broken_line_ratio=0.5))
    assert garbled and why == "broken line ratio 0.80 > 0.50"


def test_broken_lines_rules():
    # sentence end, blank-line paragraph break, markdown list: none is broken
    assert noise_scores("First line.\nSecond line.\n\nthird paragraph").broken_line_ratio == 0.0
    assert noise_scores("- item one\n- item two\nlower").broken_line_pairs == 0
    # a Chinese sentence cut between two ideographs is broken; after 。 it is not
    assert noise_scores("学习率控制每一\n步的步长。\n下一句").broken_line_ratio == pytest.approx(0.5)
    # two lines only: scored, but too few pairs to judge even with a threshold
    assert not is_garbled("the para-\nmeters", GarbleThresholds(broken_line_ratio=0.1))[0]


def test_symbol_soup():
    soup = "@@## $$%% ^^&& **~~ ||<> {}== ++@@ learning rate ▓▓▒▒░░ ���"
    s = noise_scores(soup)
    assert s.symbol_ratio > 0.6
    garbled, why = is_garbled(soup)
    assert garbled and why.startswith("symbol ratio 0.") and why.endswith(" > 0.30")
    # common zh/en punctuation is not a symbol
    assert noise_scores("“你好”，（世界）！《书》【注】——“hi”, (yes) [1]; no...").symbol_ratio == 0.0


def test_repeated_lines():
    text = "点赞关注转发\n点赞关注转发\n点赞关注转发\n学习率控制每一步的步长。"
    s = noise_scores(text)
    assert s.repetition >= 0.5
    assert is_garbled(text) == (True, f"repetition {s.repetition:.2f} > 0.50")
    # fences and rules may repeat
    fenced = "```\ncode one here\n```\n```\ncode two there\n```"
    assert noise_scores(fenced).repetition < 0.5


def test_repeated_ngram():
    text = "the loss the loss the loss the loss the loss the loss the loss"
    assert noise_scores(text).repetition > 0.8  # "the loss t" covers all but the tail
    assert noise_scores("哈" * 40).repetition == 1.0
    assert noise_scores(EN).repetition == 0.0


@pytest.mark.parametrize(
    "text, lang",
    [
        (ZH, "zh"),
        (EN, "en"),
        ("梯度下降 gradient", "mixed"),  # 4 CJK / (4 + 8) letters = 0.33
        ("12345 !!!", "unknown"),
        ("Привет, как дела? Это тест.", "unknown"),
    ],
)
def test_detect_language_script(text, lang):
    assert detect_language(text, use_lingua=False) == (lang, "script")


def test_script_thresholds():
    assert quality.ZH_MIN_CJK_SHARE == 0.6 and quality.EN_MAX_CJK_SHARE == 0.1
    # 6 CJK vs 4 Latin letters: share 0.6 -> zh; 1 CJK vs 9 Latin letters: share 0.1 -> en
    assert detect_language("学习率控制步长 abcd", use_lingua=False) == ("zh", "script")
    assert detect_language("率 abcdefghi", use_lingua=False) == ("en", "script")
    assert detect_language(MIXED, use_lingua=False) == ("mixed", "script")


def test_lingua_fallback():
    pytest.importorskip("lingua")
    assert quality.lingua_available()
    assert detect_language("我们用 Adam optimizer 和 cosine schedule 训练 model") == ("zh", "lingua")
    assert detect_language(MIXED)[1] == "lingua"
    assert detect_language("The learning rate 学习率 controls each step 步长") == ("en", "lingua")
    assert detect_language(ZH) == ("zh", "script")  # clear cases never reach lingua


def test_without_lingua(monkeypatch):
    monkeypatch.setattr(quality, "_lingua_detector", lambda: None)
    assert detect_language(MIXED) == ("mixed", "script")
    assert filter_document(MIXED) == quality.Verdict(True, None, "mixed", count_units(MIXED), "script")
    assert not filter_document(MIXED, allowed_langs=("zh",)).keep


def test_filter_document():
    assert filter_document(ZH) == quality.Verdict(True, None, "zh", count_units(ZH), "script")
    assert filter_document(EN).lang == "en" and filter_document(EN).keep
    short = filter_document("你好")
    assert short == quality.Verdict(False, "too short: 2 units < 5", "zh", 2, "script")
    assert filter_document("学习率控制每一步的步长").keep
    soup = filter_document("@@## $$%% ^^&& **~~ ||<> {}== ++@@ learning rate is the step size")
    assert not soup.keep and soup.reason.startswith("garbled: symbol ratio")
    en_only = filter_document(ZH, allowed_langs=("en",))
    assert not en_only.keep and en_only.reason == "language zh not in ['en']"
    assert not filter_document("12345 67890 11 22 33").keep  # digits only: unknown language


def _script_counts_reference(text: str):
    """The per-character definition script_counts must match: CJK by code point, then Latin letters
    by ASCII or a Unicode name starting with LATIN, then any other letter."""
    import unicodedata

    from ta_data.quality import ScriptCounts, is_cjk

    cjk = latin = other = 0
    for c in text:
        if is_cjk(c):
            cjk += 1
        elif c.isalpha():
            if c.isascii() or unicodedata.name(c, "").startswith("LATIN"):
                latin += 1
            else:
                other += 1
    return ScriptCounts(cjk, latin, other)


def test_script_counts_equal_the_per_character_definition_on_every_script():
    import random

    from ta_data.quality import script_counts

    rng = random.Random(0)
    spans = [(0, 0x2FF), (0x370, 0x1FFF), (0x3000, 0x9FFF), (0xF900, 0xFB00), (0xFF00, 0xFFEF),
             (0x1D400, 0x1D7FF), (0x10780, 0x107BF), (0x20000, 0x2A000)]
    for _ in range(2000):
        chars = (chr(rng.randint(*rng.choice(spans))) for _ in range(rng.randint(0, 40)))
        text = "".join(c for c in chars if not 0xD800 <= ord(c) <= 0xDFFF)
        assert script_counts(text) == _script_counts_reference(text), text
    assert script_counts("Ｃａｆé 学习率lr ℓ Ωμέγα") == _script_counts_reference("Ｃａｆé 学习率lr ℓ Ωμέγα")
