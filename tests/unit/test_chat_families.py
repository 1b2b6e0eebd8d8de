"""Chat encoding parity with the real tokenizers and templates of every family, checked token by token."""
from __future__ import annotations

import pytest

from ta_train.chat import IGNORE_INDEX, encode_messages, normalize_messages, render_prompt
from ta_train.chat_families import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, end_of_turn_token
from tests.tokenizers import fresh_tokenizer, real_tokenizer, shared_template

SYSTEM = {"role": "system", "content": "You are the TA of Physics 101. Cite lecture timestamps."}
ONE = [{"role": "user", "content": "What is Newton's second law?"}, {"role": "assistant", "content": "F = m a: force equals mass times acceleration."}]
SEVERAL = ONE + [
    {"role": "user", "content": "能量守恒是什么意思？"},
    {"role": "assistant", "content": "孤立系统的总能量保持不变（见第3讲 00:12:30）。"},
    {"role": "user", "content": "Give a one-word answer: is energy conserved?"},
    {"role": "assistant", "content": "Yes."},
]
CASES = {"one": ONE, "several": SEVERAL, "one+system": [SYSTEM, *ONE], "several+system": [SYSTEM, *SEVERAL]}


def family_tokenizer(name: str):
    """(tokenizer, family) for each family ta supports, from real packages and real templates."""
    if name == "qwen3":
        return real_tokenizer("qwen3", "chatml"), "chatml"
    if name == "qwen2.5":
        return real_tokenizer("qwen3", "chatml", shared_template("qwen2.5-instruct.jinja")), "chatml"
    if name == "qwen2":
        return real_tokenizer("qwen3", "chatml", shared_template("qwen2-instruct.jinja")), "chatml"
    if name == "smollm2":
        return real_tokenizer("smollm2", "chatml"), "chatml"
    if name == "llama3":
        return real_tokenizer("llama3", "llama3", shared_template("llama-3-instruct.jinja")), "llama3"
    if name == "llama2":
        return real_tokenizer("llama2", "llama2", shared_template("llama-2-chat.jinja")), "llama2"
    raise ValueError(name)


FAMILIES = ["qwen3", "qwen2.5", "qwen2", "smollm2", "llama3", "llama2"]


def labeled_runs(enc: dict) -> list[list[int]]:
    runs, current = [], []
    for x, y in zip(enc["input_ids"], enc["labels"]):
        if y == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert y == x
            current.append(y)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(CASES))
def test_ids_equal_apply_chat_template_and_labels_are_exactly_the_answers(family, case):
    tok, _ = family_tokenizer(family)
    messages = CASES[case]
    enc = encode_messages(tok, messages, max_seq_len=4096)
    assert enc["input_ids"] == tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    eot = end_of_turn_token(tok)
    eot_id = tok.convert_tokens_to_ids(eot)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = labeled_runs(enc)
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run[-1] == eot_id  # the end-of-turn token is a label, also when pad == eos
        assert tok.decode(run).strip() == f"{answer}{eot}" or tok.decode(run).strip() == f"{answer} {eot}"
    assert sum(1 for y in enc["labels"] if y != IGNORE_INDEX) == sum(len(r) for r in runs)


@pytest.mark.parametrize("family", FAMILIES)
def test_bos_is_never_doubled(family):
    tok, _ = family_tokenizer(family)
    ids = encode_messages(tok, CASES["several+system"], max_seq_len=4096)["input_ids"]
    bos = tok.bos_token_id
    if family in ("llama3", "llama2"):
        assert ids[0] == bos and ids[1] != bos
        plain = tok(tok.apply_chat_template(CASES["one"], tokenize=False))["input_ids"]
        if family == "llama3":  # the post-processor would add a second one to the rendered text
            assert plain[:2] == [bos, bos]
    if family.startswith("qwen"):
        assert bos is None
    assert all(not (a == b == bos) for a, b in zip(ids, ids[1:]))


def test_llama3_pad_can_be_the_reserved_finetune_token_and_eot_is_still_learned():
    tok = fresh_tokenizer("llama3", "llama3", LLAMA3_TEMPLATE, pad_token="<|finetune_right_pad_id|>")
    assert tok.pad_token_id == 128004
    enc = encode_messages(tok, ONE, max_seq_len=256)
    assert enc["labels"][-1] == tok.convert_tokens_to_ids("<|eot_id|>") == 128009


def test_qwen_pad_is_endoftext_and_differs_from_eot():
    tok, _ = family_tokenizer("qwen3")
    assert tok.pad_token == "<|endoftext|>" and end_of_turn_token(tok) == "<|im_end|>"


def test_adding_a_pad_token_grows_the_tokenizer(make_cfg):
    tok = fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE, pad_token="add")
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 32000 and len(tok) == 32001


def test_a_pad_token_that_does_not_exist_is_an_error():
    with pytest.raises(ValueError, match="not a token"):
        fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE, pad_token="<|nope|>")


@pytest.mark.parametrize("kind, family, shared_name, ours", [
    ("llama3", "llama3", "llama-3-instruct.jinja", LLAMA3_TEMPLATE),
    ("llama2", "llama2", "llama-2-chat.jinja", LLAMA2_TEMPLATE),
])
def test_our_fallback_templates_render_like_the_real_ones(kind, family, shared_name, ours):
    real = real_tokenizer(kind, family, shared_template(shared_name))
    mine = real_tokenizer(kind, family, ours)
    for messages in CASES.values():
        for gen in (False, True):
            if family == "llama2" and gen:
                continue  # Llama-2's template has no generation prompt
            assert mine.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == real.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen
            )


def test_baichuan2_template_masks_roles_and_learns_eos():
    tok = fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<reserved_106>", "<reserved_107>"]})
    from ta_train.chat_families import prepare_tokenizer

    tok.chat_template = None
    prepare_tokenizer(tok, "baichuan2")
    enc = encode_messages(tok, SEVERAL, max_seq_len=4096)
    text = tok.decode(enc["input_ids"])
    assert "<reserved_106>What is Newton" in text and "<reserved_107>F = m a" in text
    runs = labeled_runs(enc)
    assert [tok.decode(r) for r in runs][-1].strip() == "Yes.</s>"
    assert all(r[-1] == tok.eos_token_id for r in runs) and len(runs) == 3
    prompt = render_prompt(tok, SEVERAL[:1])
    assert tok.convert_ids_to_tokens(prompt[-1]) == "<reserved_107>"


def test_system_prompt_is_folded_when_the_template_cannot_render_it(caplog):
    tok = fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<reserved_106>", "<reserved_107>"]})
    from ta_train.chat_families import BAICHUAN2_TEMPLATE

    tok.chat_template = BAICHUAN2_TEMPLATE
    msgs = normalize_messages(tok, [SYSTEM, *ONE])
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"].startswith(SYSTEM["content"] + "\n\n")
    encode_messages(tok, [SYSTEM, *ONE], max_seq_len=512)
    assert sum("folding it into the first user turn" in r.message for r in caplog.records) <= 1


@pytest.mark.parametrize("family", ["qwen2.5", "llama3", "smollm2"])
def test_role_boundary_newlines_are_normalized(family):
    tok, _ = family_tokenizer(family)
    messy = [{"role": "user", "content": "\nWhat is a vector?\n\n"}, {"role": "assistant", "content": "\n\nAn arrow with length.\n"}]
    clean = [{"role": "user", "content": "What is a vector?"}, {"role": "assistant", "content": "An arrow with length."}]
    assert encode_messages(tok, messy, max_seq_len=512) == encode_messages(tok, clean, max_seq_len=512)


def test_content_with_a_special_token_is_rejected():
    from ta_train.chat import EncodingRejected

    tok, _ = family_tokenizer("qwen3")
    with pytest.raises(EncodingRejected, match="special token '<\\|im_end\\|>'"):
        encode_messages(tok, [{"role": "user", "content": "hi<|im_end|>"}, {"role": "assistant", "content": "ok"}], max_seq_len=64)


def baichuan_standin():
    tok = fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<reserved_106>", "<reserved_107>"]})
    from ta_train.chat_families import BAICHUAN2_TEMPLATE

    tok.chat_template = BAICHUAN2_TEMPLATE
    return tok


def test_a_folded_system_prompt_survives_truncation():
    tok = baichuan_standin()
    msgs = [SYSTEM, *SEVERAL]
    full = encode_messages(tok, msgs, max_seq_len=4096)
    enc = encode_messages(tok, msgs, max_seq_len=len(full["input_ids"]) - 5)
    text = tok.decode(enc["input_ids"])
    assert SYSTEM["content"] in text and "What is Newton" not in text and text.rstrip().endswith("Yes.</s>")


def test_template_errors_and_unfoldable_systems_are_rejections_not_crashes():
    from ta_train.chat import EncodingRejected

    tok, _ = family_tokenizer("llama2")
    with pytest.raises(EncodingRejected, match="chat template refused"):
        encode_messages(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}], max_seq_len=64)
    with pytest.raises(EncodingRejected, match="no user turn"):
        encode_messages(baichuan_standin(), [SYSTEM, {"role": "assistant", "content": "hi"}], max_seq_len=64)


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_cutting_the_left_keeps_the_bos(family):
    tok, _ = family_tokenizer(family)
    msgs = [{"role": "system", "content": "Rule. " * 300}, *ONE]
    enc = encode_messages(tok, msgs, max_seq_len=48)
    assert len(enc["input_ids"]) == 48 and enc["input_ids"][0] == tok.bos_token_id != enc["input_ids"][1]
    assert labeled_runs(enc)[-1][-1] == tok.convert_tokens_to_ids(end_of_turn_token(tok))


@pytest.mark.parametrize("family", ["qwen3", "llama2", "llama3"])
def test_the_slow_tokenizer_path_matches_the_offsets_path(family):
    from ta_train.chat import _tokenize_pieces, assistant_spans, render_text

    tok, _ = family_tokenizer(family)
    fast = encode_messages(tok, SEVERAL, max_seq_len=4096)
    text = render_text(tok, SEVERAL)
    ids, inside = _tokenize_pieces(tok, text, assistant_spans(tok, SEVERAL, text, "assistant"))
    assert ids == fast["input_ids"]
    assert [x if keep else IGNORE_INDEX for x, keep in zip(ids, inside)] == fast["labels"]
