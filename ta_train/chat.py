"""Conversations to token ids and labels: the one place that does it (eval, export, rag reuse it).

Labels come from the tokenizer's own chat template: for each trained assistant turn, the tokens
between "the conversation up to this turn, with the generation prompt" and "the conversation
including this turn" are the answer plus its end-of-turn token, and carry labels; everything else
(system, user turns, role headers) is IGNORE_INDEX. Padding is masked by position, never by token
id, so an end-of-turn token that doubles as the pad token is still learned.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
log = logging.getLogger(__name__)


class EncodingRejected(ValueError):
    """An example that must not be trained on (the reason goes to rejects.jsonl)."""


def from_alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    """Alpaca `{instruction, input, output[, system]}` -> messages (input appended after a blank line)."""
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"alpaca record needs a non-empty string field {key!r}")
    prompt = record["instruction"].strip()
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("alpaca field 'input' must be a string")
    if extra.strip():
        prompt = f"{prompt}\n\n{extra.strip()}"
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"].strip()}]
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.insert(0, {"role": "system", "content": record["system"].strip()})
    return messages


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def from_sharegpt(record: dict[str, Any]) -> list[dict[str, str]]:
    """ShareGPT `{conversations: [{from, value}] or [{role, content}], system?}` -> messages."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("sharegpt record needs a non-empty list field 'conversations'")
    messages: list[dict[str, str]] = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"].strip()})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"conversations[{i}] is not an object")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in _SHAREGPT_ROLES:
            raise ValueError(f"conversations[{i}] has unknown speaker {speaker!r}")
        if not isinstance(text, str):
            raise ValueError(f"conversations[{i}] has no string value/content")
        messages.append({"role": _SHAREGPT_ROLES[speaker], "content": text.strip()})
    validate_messages(messages)
    return messages


def validate_messages(messages: Sequence[dict[str, str]]) -> None:
    """Roles known, system only first, at least one assistant turn with content."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i} has role {m.get('role')!r}, expected one of {ROLES}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("conversation has no non-empty assistant turn to train on")


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(ids)


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids to feed at inference: the chat template with the assistant header appended."""
    return _render(tokenizer, messages, add_generation_prompt)


def _label_spans(tokenizer: Any, messages: Sequence[dict[str, str]], full: list[int], train_on: str) -> list[tuple[int, int]]:
    """[start, end) token spans of the assistant turns to train on, checked against the full render."""
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        assistant_turns = assistant_turns[-1:]
    spans = []
    for i in assistant_turns:
        start = len(_render(tokenizer, messages[:i], add_generation_prompt=True))
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(upto)] != upto or upto[:start] != full[:start]:
            raise EncodingRejected("chat template is not prefix-stable; cannot locate the assistant turn")
        spans.append((start, len(upto)))
    return spans


def encode_messages(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    max_seq_len: int,
    train_on: str = "assistant",
    system: str | None = None,
) -> dict[str, list[int]]:
    """Encode one conversation for training: input_ids, labels, attention_mask (lists of ints).

    train_on: "assistant" (every assistant turn), "last" (the last one) or "all" (every token).
    system: a system prompt used when the conversation has none.
    Too long: the oldest user/assistant exchanges go first (a system prompt stays), then the left
    of what remains, so the latest turn survives. Raises EncodingRejected when no label survives.
    """
    messages = [dict(m) for m in messages]
    validate_messages(messages)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    head = 1 if messages[0]["role"] == "system" else 0
    full = _render(tokenizer, messages, add_generation_prompt=False)
    while len(full) > max_seq_len and _n_exchanges(messages[head:]) > 1:
        messages = messages[:head] + _drop_first_exchange(messages[head:])
        full = _render(tokenizer, messages, add_generation_prompt=False)
    if train_on == "all":
        labels = list(full)
    else:
        labels = [IGNORE_INDEX] * len(full)
        for start, end in _label_spans(tokenizer, messages, full, train_on):
            labels[start:end] = full[start:end]
    if len(full) > max_seq_len:
        full, labels = full[-max_seq_len:], labels[-max_seq_len:]
    if sum(1 for x in labels[1:] if x != IGNORE_INDEX) == 0:
        raise EncodingRejected(f"no trained token left within max_seq_len={max_seq_len}")
    return {"input_ids": full, "labels": labels, "attention_mask": [1] * len(full)}


def _n_exchanges(turns: Sequence[dict[str, str]]) -> int:
    return sum(1 for m in turns if m["role"] == "assistant")


def _drop_first_exchange(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """Remove everything up to and including the first assistant turn."""
    first_answer = next(i for i, m in enumerate(turns) if m["role"] == "assistant")
    return turns[first_answer + 1 :]


def pad_right(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-pad a training batch; padded positions get attention 0 and label IGNORE_INDEX."""
    width = max(len(e["input_ids"]) for e in examples)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for e in examples:
        gap = width - len(e["input_ids"])
        out["input_ids"].append(list(e["input_ids"]) + [pad_id] * gap)
        out["labels"].append(list(e["labels"]) + [IGNORE_INDEX] * gap)
        out["attention_mask"].append(list(e["attention_mask"]) + [0] * gap)
    return out


def pad_left(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, list[list[int]]]:
    """Left-pad prompts for batched generation, so every prompt ends where generation starts."""
    width = max(len(p) for p in prompts)
    return {
        "input_ids": [[pad_id] * (width - len(p)) + list(p) for p in prompts],
        "attention_mask": [[0] * (width - len(p)) + [1] * len(p) for p in prompts],
    }
