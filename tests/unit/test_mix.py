"""Stage 9 (ta_data.mix): hash-based ratios, caps, evalset hold-out, split and output forms."""
from __future__ import annotations

import random

import pytest

from ta_data.config import MixConfig
from ta_data.mix import (
    below, eval_item, eval_kind, in_format, record_hash, replay_indices, replay_target, select_course, to_messages,
)


def alpaca(i: int, kind: str = "answer", source: str = "notes.md", timestamp: str | None = None) -> dict:
    return {"instruction": f"question {i}?", "input": f"context {i}.", "output": f"answer {i}.",
            "meta": {"kind": kind, "source": source, "timestamp": timestamp}}


def course(n: int) -> list[dict]:
    kinds = ["answer", "quiz", "extract", "summary", "refusal"]
    return [alpaca(i, kinds[i % 5], "a.md" if i % 2 else "b.srt", "00:01:0%d" % (i % 10) if i % 7 == 0 else None)
            for i in range(n)]


def test_record_hash_is_stable_and_salted():
    r = alpaca(1)
    assert record_hash(r, "split") == record_hash(dict(reversed(list(r.items()))), "split")  # key order free
    assert record_hash(r, "split") != record_hash(r, "eval")
    assert record_hash(r, "split", 0) != record_hash(r, "split", 1)
    assert below(0, 0.1) and not below(2**64 - 1, 0.99)


def test_formats_round_trip_and_multi_turn_stays_sharegpt():
    r = alpaca(3)
    share = in_format(r, "sharegpt")
    assert share["conversations"] == [{"role": "user", "content": "question 3?\n\ncontext 3."},
                                      {"role": "assistant", "content": "answer 3."}]
    assert to_messages(in_format(share, "alpaca")) == to_messages(r)
    multi = {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "meta": {}}
    assert in_format(multi, "alpaca") == multi
    with_system = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                     {"from": "gpt", "value": "a"}], "meta": {"kind": "open"}}
    assert in_format(with_system, "alpaca") == {"instruction": "q", "input": "", "output": "a", "system": "s",
                                               "meta": {"kind": "open"}}


def test_eval_kinds():
    assert eval_kind(alpaca(0, "answer")) == "factual"
    assert eval_kind(alpaca(0, "answer", timestamp="00:12:30")) == "citation"
    assert eval_kind(alpaca(0, "refusal", timestamp="00:12:30")) == "refusal"
    assert eval_kind(alpaca(0, "quiz")) == "format"
    assert eval_kind(alpaca(0, "open")) is None
    item = eval_item(alpaca(5, timestamp="00:12:30"), "citation", 0, "You are a TA.")
    assert item["messages"] == [{"role": "system", "content": "You are a TA."}, {"role": "user", "content": "question 5?"}]
    assert item["reference"] == "answer 5." and item["context"] == "context 5." and item["citations"] == ["00:12:30"]
    assert item["id"].startswith("citation-")


def test_ratios_match_a_naive_reference():
    records = course(500)
    cfg = MixConfig(ratios={"quiz": 0.3}, evalset_per_kind=0)
    kept, held, drops = select_course(lambda: iter(records), cfg)
    expected = {i for i, r in enumerate(records)
                if r["meta"]["kind"] != "quiz" or record_hash(r, "ratio", 0) < 0.3 * 2**64}
    assert kept == expected and not held
    assert drops["ratio"] == 500 - len(expected)
    assert 0.2 < sum(records[i]["meta"]["kind"] == "quiz" for i in kept) / 100 < 0.4


def test_caps_keep_the_smallest_hashes():
    records = course(200)
    cfg = MixConfig(caps={"b.srt": 7, "summary": 5}, evalset_per_kind=0)
    kept, _, drops = select_course(lambda: iter(records), cfg)
    for key, field, cap in (("b.srt", "source", 7), ("summary", "kind", 5)):
        group = [i for i, r in enumerate(records) if r["meta"][field] == key]
        best = set(sorted(group, key=lambda i: (record_hash(records[i], "cap", 0), i))[:cap])
        assert {i for i in kept if i in group} <= best
    assert sum(records[i]["meta"]["source"] == "b.srt" for i in kept) <= 7
    assert drops["cap"] == 200 - len(kept)


def test_evalset_hold_out_ignores_input_order():
    records = course(300)
    cfg = MixConfig(evalset_per_kind=4, evalset_fraction=0.5)
    kept, held, _ = select_course(lambda: iter(records), cfg)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    _, held2, _ = select_course(lambda: iter(shuffled), cfg)
    as_set = lambda rs, h: {(rs[i]["instruction"], k) for i, k in h.items()}  # noqa: E731
    assert as_set(records, held) == as_set(shuffled, held2)
    counts = {k: list(held.values()).count(k) for k in ("factual", "refusal", "format", "citation")}
    assert counts == {"factual": 4, "refusal": 4, "format": 4, "citation": 4}
    assert set(held) <= kept


@pytest.mark.parametrize("ratio,cap,n,expected", [(None, None, 10, None), (0.2, None, 10, 2), (0.5, 3, 10, 3), (None, 4, 10, 4)])
def test_replay_target(ratio, cap, n, expected):
    assert replay_target(ratio, cap, n) == expected


def test_replay_indices_take_the_smallest_hashes():
    records = [alpaca(i, "open") for i in range(50)]
    got = replay_indices(lambda: iter(records), 6, 0)
    assert got == set(sorted(range(50), key=lambda i: record_hash(records[i], "replay", 0))[:6])
    assert replay_indices(lambda: iter(records), None, 0) is None


def test_record_lang_reads_question_and_answer_only():
    from ta_data.mix import record_lang

    zh = {"instruction": "什么是梯度？", "input": "The gradient is a vector of partial derivatives of the loss.",
          "output": "梯度是损失对参数的偏导数组成的向量。", "meta": {}}
    assert record_lang(zh) == "zh"
    assert record_lang({"conversations": [{"role": "user", "content": "What is a loss?"},
                                          {"role": "assistant", "content": "A number to minimize."}]}) == "en"
    assert record_lang({"instruction": "123", "input": "", "output": "456"}) == "unknown"
