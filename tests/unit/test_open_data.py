"""Open instruction dataset readers (ta_data.readers.open_data): own format-exact samples in
tests/data/open_data, plus the real samples in /work/shared/assets/data when present."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ta_data.readers.open_data import FORMATS, read_open_dataset
from ta_data.readers.open_data_qa import REFUSAL
from ta_data.records import Reject

DATA = Path(__file__).resolve().parent.parent / "data" / "open_data"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "assets" / "data"


def _read(name: str, fmt: str) -> tuple[list[dict], list[Reject]]:
    """Records and Rejects of one sample file read as ``fmt``."""
    rejects: list[Reject] = []
    return list(read_open_dataset(DATA / name, fmt, rejects)), rejects


def _where(rejects: list[Reject]) -> list[tuple[int | None, str]]:
    """(line, reason) of each Reject."""
    return [(reject.line, reject.reason) for reject in rejects]


def _pairs(record: dict) -> list[tuple[str, str]]:
    """(role, content) of each turn."""
    return [(turn["role"], turn["content"]) for turn in record["conversations"]]


def _check_contract(records: list[dict], source: str, dataset: str) -> None:
    """Every record has exactly the contract's shape."""
    for record in records:
        assert set(record) == {"conversations", "meta"}
        assert set(record["meta"]) == {"source", "dataset", "timestamp", "kind"}
        assert record["meta"]["source"] == source
        assert record["meta"]["dataset"] == dataset
        assert record["meta"]["timestamp"] is None
        assert record["meta"]["kind"] in ("open", "refusal")
        roles = [turn["role"] for turn in record["conversations"] if turn["role"] != "system"]
        assert roles and roles[0] == "user" and roles[-1] == "assistant"
        assert all(isinstance(t["content"], str) and t["content"] for t in record["conversations"])
        json.dumps(record)


def test_formats_listed_and_unknown_format_raises() -> None:
    assert len(FORMATS) == 12 and "squad" in FORMATS and "natural_questions" in FORMATS
    with pytest.raises(ValueError, match="unknown open dataset format"):
        read_open_dataset(DATA / "alpaca.json", "nope", [])


def test_alpaca_json_array_with_input_history_and_reject() -> None:
    records, rejects = _read("alpaca.json", "alpaca")
    _check_contract(records, "alpaca.json", "alpaca")
    assert _pairs(records[1])[0] == ("user", "Translate into French.\n\nGood morning, class.")
    assert _pairs(records[2]) == [
        ("system", "You are a tutor."), ("user", "Hi"), ("assistant", "Hello!"),
        ("user", "Continue the chat."), ("assistant", "Sure."),
    ]
    assert _where(rejects) == [(None, "[2]: empty answer")]
    assert rejects[0].file.endswith("alpaca.json") and rejects[0].record["output"] == "  "


def test_sharegpt_roles_and_rejects() -> None:
    records, rejects = _read("sharegpt.jsonl", "sharegpt")
    _check_contract(records, "sharegpt.jsonl", "sharegpt")
    assert [t[0] for t in _pairs(records[0])] == ["system", "user", "assistant", "user", "assistant"]
    assert [line for line, _ in _where(rejects)] == [2, 4, 5, 6]
    reasons = [reason for _, reason in _where(rejects)]
    assert reasons[0] == "conversations[1]: unknown speaker 'robot'"
    assert reasons[1] == "last turn is not an answer"
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "turn 1: empty answer"


def test_openorca_system_prompt_optional() -> None:
    records, rejects = _read("openorca.jsonl", "openorca")
    _check_contract(records, "openorca.jsonl", "openorca")
    assert _pairs(records[0])[0][0] == "system" and _pairs(records[1])[0][0] == "user"
    assert _where(rejects) == [(3, "missing field 'response'")]


def test_firefly_multi_turn_and_single_turn() -> None:
    records, rejects = _read("firefly.jsonl", "firefly")
    _check_contract(records, "firefly.jsonl", "firefly")
    assert len(records[0]["conversations"]) == 4
    assert _pairs(records[1]) == [("user", "对联：春风送暖"), ("assistant", "下联：瑞雪迎新")]
    assert _where(rejects) == [(3, "conversation[0]: missing field 'assistant'")]


def test_ultrachat_data_and_messages() -> None:
    records, rejects = _read("ultrachat.jsonl", "ultrachat")
    _check_contract(records, "ultrachat.jsonl", "ultrachat")
    assert [t[0] for t in _pairs(records[0])] == ["user", "assistant"] * 2
    assert _pairs(records[1]) == [("user", "Define entropy."), ("assistant", "A measure of disorder.")]
    assert _where(rejects) == [(3, "field 'data' has an odd number of turns (last question unanswered)")]


def test_squad_v2_nested_refusal_and_item_paths() -> None:
    records, rejects = _read("squad_v2.json", "squad_v2")
    _check_contract(records, "squad_v2.json", "squad_v2")
    assert [r["meta"]["kind"] for r in records] == ["open", "refusal", "open"]
    assert _pairs(records[0])[0][1].startswith("Context:\nThe Blue Lab opened in 2011")
    assert _pairs(records[0])[0][1].endswith("Question: When did the Blue Lab open?")
    assert _pairs(records[0])[1] == ("assistant", "2011")
    assert _pairs(records[1])[1] == ("assistant", REFUSAL)
    assert _where(rejects) == [
        (None, "data[0].paragraphs[1].qas[1]: empty question"),
        (None, "data[0].paragraphs[1].qas[2]: no answer"),
    ]


def test_squad_flattened_jsonl() -> None:
    records, rejects = _read("squad_flat.jsonl", "squad")
    _check_contract(records, "squad_flat.jsonl", "squad")
    assert _pairs(records[0])[1] == ("assistant", "100 degrees Celsius")
    assert records[1]["meta"]["kind"] == "refusal"  # HF squad_v2: empty answer lists
    assert _where(rejects) == [(3, "no answer"), (4, "missing field 'context'")]


def test_c3_nested_items() -> None:
    records, rejects = _read("c3.json", "c3")
    _check_contract(records, "c3.json", "c3")
    user, answer = _pairs(records[0])
    assert user[1] == (
        "男：你明天去图书馆吗？\n女：去，我要还书。\n\nQuestion: 女的明天去哪儿？\n"
        "A. 商店\nB. 图书馆\nC. 学校"
    )
    assert answer == ("assistant", "B. 图书馆")
    assert _where(rejects) == [
        (None, "[0][1][1]: answer is not among the choices"),
        (None, "[1]: not a [document, questions, id] item or a JSON object"),
    ]


def test_gsm8k_final_answer() -> None:
    records, rejects = _read("gsm8k.jsonl", "gsm8k")
    _check_contract(records, "gsm8k.jsonl", "gsm8k")
    assert _pairs(records[0])[1] == ("assistant", "He has 3 + 4 = <<3+4=7>>7 pens.\nAnswer: 7")
    assert _where(rejects) == [(2, "no '####' final answer"), (3, "empty answer after '####'")]


def test_boolq_yes_no() -> None:
    records, rejects = _read("boolq.jsonl", "boolq")
    _check_contract(records, "boolq.jsonl", "boolq")
    assert [_pairs(r)[1][1] for r in records] == ["Yes.", "No."]
    assert _pairs(records[1])[0][1].endswith("Question: does the canal freeze?")
    assert _where(rejects) == [(3, "answer is not true/false")]


def test_commonsenseqa_lettered_choices() -> None:
    records, rejects = _read("commonsenseqa.jsonl", "commonsenseqa")
    _check_contract(records, "commonsenseqa.jsonl", "commonsenseqa")
    assert _pairs(records[0]) == [
        ("user", "Where would a student keep a pencil?\nA. oven\nB. pencil case\nC. river"),
        ("assistant", "B. pencil case"),
    ]
    assert _where(rejects) == [(2, "answerKey 'E' is not a choice label"), (3, "missing field 'answerKey'")]


def test_natural_questions_short_long_yes_no() -> None:
    records, rejects = _read("nq.jsonl", "nq")
    _check_contract(records, "nq.jsonl", "nq")
    assert [_pairs(r)[1][1] for r in records] == [
        "2011", "The Blue Lab opened in 2011 in Springfield .", "Yes."
    ]
    assert _pairs(records[0])[0] == ("user", "when did the blue lab open?")
    assert _where(rejects) == [
        (4, "no short or long answer"),
        (5, "annotations[0].short_answers[0]: token offsets 10..99 out of range"),
    ]


def test_mathinstruct_json_array() -> None:
    records, rejects = _read("mathinstruct.json", "mathinstruct")
    _check_contract(records, "mathinstruct.json", "mathinstruct")
    assert _where(rejects) == [(None, "[1]: missing field 'output'")]


def test_unreadable_and_non_array_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"instruction": "x"', encoding="utf-8")
    rejects: list[Reject] = []
    assert list(read_open_dataset(bad, "alpaca", rejects)) == []
    assert rejects[0].line is None and rejects[0].reason.startswith("invalid JSON")
    obj = tmp_path / "obj.json"
    obj.write_text('{"instruction": "x", "output": "y"}', encoding="utf-8")
    rejects = []
    assert list(read_open_dataset(obj, "alpaca", rejects)) == []
    assert _where(rejects) == [(None, "JSON document is not an array")]
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9"}\n')
    rejects = []
    assert list(read_open_dataset(latin, "gsm8k", rejects)) == []
    assert rejects[0].reason.startswith("not UTF-8")


REAL = [
    ("gsm8k_test_first200.jsonl", "gsm8k", 200),
    ("cmrc2018_dev_first200.jsonl", "cmrc2018", 200),
    ("drcd_dev_first200.jsonl", "drcd", 200),
    ("c3_m_dev_first200.jsonl", "c3", 200),
    ("firefly_dummy_data.jsonl", "firefly", 33),
    ("alpaca_en_demo_first200.jsonl", "alpaca", 200),
    ("alpaca_zh_demo_first200.jsonl", "alpaca", 200),
]


@pytest.mark.parametrize(("name", "fmt", "count"), REAL)
def test_real_samples(name: str, fmt: str, count: int) -> None:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    rejects: list[Reject] = []
    records = list(read_open_dataset(path, fmt, rejects))
    assert rejects == []
    assert len(records) == count
    _check_contract(records, name, fmt)
    last = records[0]["conversations"][-1]["content"]
    if fmt == "gsm8k":
        assert last.endswith("\nAnswer: 18")
    elif fmt in ("cmrc2018", "drcd"):
        assert records[0]["conversations"][0]["content"].startswith("Context:\n")
    elif fmt == "c3":
        assert last == "C. 他是一个很虚心的人"
