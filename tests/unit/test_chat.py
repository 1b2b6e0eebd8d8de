"""First version of the chat encoding, on SmolLM2's real tokenizer (ChatML, pad == eos)."""
from __future__ import annotations

import pytest

from ta_train.chat import (
    IGNORE_INDEX,
    EncodingRejected,
    encode_messages,
    encode_with_info,
    from_alpaca,
    left_padded_prompts,
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
    assert trained_text(tok, enc) == "The vector of partial derivatives.<|im_end|>每一步沿负梯度方向走的步长。<|im_end|>"
    for i, (x, y) in enumerate(zip(enc["input_ids"], enc["labels"])):
        assert y in (IGNORE_INDEX, x), f"label at {i} differs from its input id"
    assert enc["labels"].count(tok.eos_token_id) == 2


def test_train_on_last_and_all(smollm2_tokenizer):
    tok = smollm2_tokenizer
    last = encode_messages(tok, TWO_TURNS, max_seq_len=512, train_on="last")
    assert trained_text(tok, last) == "每一步沿负梯度方向走的步长。<|im_end|>"
    everything = encode_messages(tok, TWO_TURNS, max_seq_len=512, train_on="all")
    assert everything["labels"] == everything["input_ids"]


def test_system_prompt_is_used_when_the_conversation_has_none(smollm2_tokenizer):
    tok = smollm2_tokenizer
    enc = encode_messages(tok, TWO_TURNS[:2], max_seq_len=512, system="You are a TA.")
    assert tok.decode(enc["input_ids"]).startswith("<|im_start|>system\nYou are a TA.<|im_end|>")


def test_truncation_drops_the_oldest_exchange_and_keeps_the_latest_answer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    full = encode_messages(tok, TWO_TURNS, max_seq_len=512)
    enc, info = encode_with_info(tok, TWO_TURNS, max_seq_len=len(full["input_ids"]) - 5)
    text = tok.decode(enc["input_ids"])
    assert "What is a gradient?" not in text and text.endswith("步长。<|im_end|>\n")
    assert text.startswith("<|im_start|>system\n")  # the (default) system prompt stays
    assert info["dropped_turns"] == 2


def test_many_short_turns_keep_the_most_recent_ones(smollm2_tokenizer):
    turns = []
    for k in range(40):
        turns += [{"role": "user", "content": f"question {k}"}, {"role": "assistant", "content": f"answer {k}"}]
    enc, info = encode_with_info(smollm2_tokenizer, turns, max_seq_len=120, system="Be brief.")
    text = smollm2_tokenizer.decode(enc["input_ids"])
    assert len(enc["input_ids"]) <= 120 and text.startswith("<|im_start|>system\nBe brief.")
    assert "answer 39<|im_end|>" in text and "question 0\n" not in text and info["dropped_turns"] > 0


def test_one_enormous_user_turn_loses_its_left_side(smollm2_tokenizer):
    tok = smollm2_tokenizer
    huge = " ".join(f"w{k}" for k in range(3000)) + " THE QUESTION?"
    msgs = [{"role": "user", "content": huge}, {"role": "assistant", "content": "The answer."}]
    enc, info = encode_with_info(tok, msgs, max_seq_len=100, system="Be brief.")
    text = tok.decode(enc["input_ids"])
    assert len(enc["input_ids"]) <= 100 and info["trimmed_chars"] > 0 and info["cut_tokens"] == 0
    assert text.startswith("<|im_start|>system\nBe brief.") and "THE QUESTION?" in text and "w0 " not in text
    assert trained_text(tok, enc) == "The answer.<|im_end|>"


def test_a_very_long_system_prompt_keeps_the_tail(smollm2_tokenizer):
    tok = smollm2_tokenizer
    system = "Rule. " * 400
    enc, info = encode_with_info(tok, TWO_TURNS[:2], max_seq_len=64, system=system)
    assert len(enc["input_ids"]) == 64 and info["cut_tokens"] > 0
    assert trained_text(tok, enc) == "The vector of partial derivatives.<|im_end|>"


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


def test_left_padded_generation_batch(smollm2_tokenizer):
    tok = smollm2_tokenizer
    batch = left_padded_prompts(tok, [TWO_TURNS[:1], TWO_TURNS[:3]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 2 and mask[0, 0] == 0 and mask[1].all()
    for row in ids:
        assert tok.decode(row[-4:]) == "<|im_start|>assistant\n"
