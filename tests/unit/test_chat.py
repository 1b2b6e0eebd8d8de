"""First version of the chat encoding, on SmolLM2's real tokenizer (ChatML, pad == eos)."""
from __future__ import annotations

import pytest

from ta_train.chat import (
    IGNORE_INDEX,
    EncodingRejected,
    encode_messages,
    from_alpaca,
    from_sharegpt,
    pad_left,
    pad_right,
    render_prompt,
)

TWO_TURNS = [
    {"role": "user", "content": "What is a gradient?"},
    {"role": "assistant", "content": "The vector of partial derivatives."},
    {"role": "user", "content": "学习率是什么？"},
    {"role": "assistant", "content": "每一步沿负梯度方向走的步长。"},
]


def trained_text(tok, enc):
    return tok.decode([t for t in enc["labels"] if t != IGNORE_INDEX])


def test_input_ids_equal_the_tokenizers_own_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    enc = encode_messages(tok, TWO_TURNS, max_seq_len=512)
    assert enc["input_ids"] == tok.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])


def test_labels_cover_assistant_content_and_end_of_turn_only(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the trap: eos must still be learned
    enc = encode_messages(tok, TWO_TURNS, max_seq_len=512)
    assert trained_text(tok, enc) == (
        "The vector of partial derivatives.<|im_end|>\n每一步沿负梯度方向走的步长。<|im_end|>\n"
    )
    for i, (x, y) in enumerate(zip(enc["input_ids"], enc["labels"])):
        assert y in (IGNORE_INDEX, x), f"label at {i} differs from its input id"
    assert enc["labels"].count(tok.eos_token_id) == 2


def test_train_on_last_and_all(smollm2_tokenizer):
    tok = smollm2_tokenizer
    last = encode_messages(tok, TWO_TURNS, max_seq_len=512, train_on="last")
    assert trained_text(tok, last) == "每一步沿负梯度方向走的步长。<|im_end|>\n"
    everything = encode_messages(tok, TWO_TURNS, max_seq_len=512, train_on="all")
    assert everything["labels"] == everything["input_ids"]


def test_system_prompt_is_used_when_the_conversation_has_none(smollm2_tokenizer):
    tok = smollm2_tokenizer
    enc = encode_messages(tok, TWO_TURNS[:2], max_seq_len=512, system="You are a TA.")
    assert tok.decode(enc["input_ids"]).startswith("<|im_start|>system\nYou are a TA.<|im_end|>")


def test_truncation_drops_the_oldest_exchange_and_keeps_the_latest_answer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    full = encode_messages(tok, TWO_TURNS, max_seq_len=512)
    enc = encode_messages(tok, TWO_TURNS, max_seq_len=len(full["input_ids"]) - 5)
    text = tok.decode(enc["input_ids"])
    assert "What is a gradient?" not in text and text.endswith("步长。<|im_end|>\n")
    tail = encode_messages(tok, TWO_TURNS[2:], max_seq_len=12)
    assert len(tail["input_ids"]) == 12 and tail["input_ids"][-2] == tok.eos_token_id


def test_an_example_with_no_label_left_is_rejected(smollm2_tokenizer):
    long_answer_first = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "ok"},
    ]
    with pytest.raises(EncodingRejected, match="no trained token"):
        encode_messages(smollm2_tokenizer, long_answer_first, max_seq_len=1)


def test_render_prompt_ends_with_the_assistant_header(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = render_prompt(tok, TWO_TURNS[:1])
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_padding_is_masked_by_position_not_by_token_id():
    examples = [
        {"input_ids": [5, 6, 2], "labels": [IGNORE_INDEX, 6, 2], "attention_mask": [1, 1, 1]},
        {"input_ids": [5], "labels": [IGNORE_INDEX], "attention_mask": [1]},
    ]
    batch = pad_right(examples, pad_id=2)  # pad == eos
    assert batch["input_ids"][1] == [5, 2, 2]
    assert batch["labels"] == [[IGNORE_INDEX, 6, 2], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"][1] == [1, 0, 0]
    left = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert left == {"input_ids": [[1, 2, 3], [0, 0, 4]], "attention_mask": [[1, 1, 1], [0, 0, 1]]}


def test_alpaca_and_sharegpt_conversions():
    assert from_alpaca({"instruction": "Summarize", "input": "text", "output": "sum"}) == [
        {"role": "user", "content": "Summarize\n\ntext"},
        {"role": "assistant", "content": "sum"},
    ]
    msgs = from_sharegpt({"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    with pytest.raises(ValueError, match="unknown speaker"):
        from_sharegpt({"conversations": [{"from": "bot", "value": "a"}]})
    with pytest.raises(ValueError, match="'output'"):
        from_alpaca({"instruction": "x", "output": ""})
