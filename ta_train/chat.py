"""Conversations to token ids and labels: the one place that does it (eval, export, rag reuse it).

The conversation is rendered to text by the tokenizer's own chat template and tokenized once with
character offsets; tokens inside an assistant turn's content or its end-of-turn token carry labels,
everything else (system, user turns, role headers, think blocks a template inserts) is
IGNORE_INDEX. Padding is masked by position, never by token id, so an end-of-turn token that
doubles as the pad token is still learned.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from ta_train.chat_families import end_of_turn_token, special_token_strings, supports_system, template_key, warn_once, wants_bos

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
        messages.append({"role": _SHAREGPT_ROLES[speaker], "content": text})  # raw: encode normalizes, inspect lints
    validate_messages(messages)
    return messages


def validate_messages(messages: Sequence[dict[str, str]], *, require_answer: bool = True) -> None:
    """Roles known, system only first, at least one assistant turn with content (for training)."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i} has role {m.get('role')!r}, expected one of {ROLES}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
    if require_answer and not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("conversation has no non-empty assistant turn to train on")


def normalize_messages(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    system: str | None = None,
    *,
    require_answer: bool = True,
    fold: bool = True,
) -> list[dict[str, str]]:
    """Strip role-boundary whitespace, add `system` when none is given, fold it when unsupported.

    Content is stripped because templates add their own newline after role headers: a leading or
    trailing newline in the data would double it. Content that contains a special token (e.g. a
    literal "<|im_end|>") is refused: it would inject control tokens. fold=False leaves a system
    message the template cannot render in place (encoding folds it after truncation).
    """
    msgs = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    if system and system.strip() and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system.strip()})
    validate_messages(msgs, require_answer=require_answer)
    for i, m in enumerate(msgs):
        for token in special_token_strings(tokenizer):
            if token in m["content"]:
                raise EncodingRejected(f"message {i} ({m['role']}) contains the special token {token!r}")
    return fold_system(tokenizer, msgs) if fold else msgs


def fold_system(tokenizer: Any, msgs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Move a system message into the first user turn when the template cannot render it."""
    if not msgs or msgs[0]["role"] != "system" or supports_system(tokenizer):
        return msgs
    warn_once(template_key(tokenizer), "the chat template renders no system prompt: folding it into the first user turn")
    sys_text, rest = msgs[0]["content"], [dict(m) for m in msgs[1:]]
    first_user = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if first_user is None:
        raise EncodingRejected("the template has no system role and there is no user turn to fold the system prompt into")
    rest[first_user]["content"] = f"{sys_text}\n\n{rest[first_user]['content']}"
    return rest


def render_text(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template's text; a template that refuses the conversation rejects the example."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as err:
        raise EncodingRejected(f"chat template refused the conversation: {err}") from err


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids to feed at inference: normalized exactly as training encodes, plus the assistant header."""
    msgs = normalize_messages(tokenizer, messages, require_answer=False)
    return _tokenize(tokenizer, render_text(tokenizer, msgs, add_generation_prompt))[0]


def left_padded_prompts(tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]]) -> dict[str, Any]:
    """A generation batch: render_prompt for each conversation, left-padded, as torch tensors."""
    import torch

    batch = pad_left([render_prompt(tokenizer, c) for c in conversations], tokenizer.pad_token_id)
    return {k: torch.tensor(v) for k, v in batch.items()}


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """ids (exactly what apply_chat_template(tokenize=True) gives) and character offsets."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _fix_bos(tokenizer, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], (0, 0))


def _fix_bos(tokenizer: Any, ids: list[int], marks: list, bos_mark: Any) -> tuple[list[int], list]:
    """BOS once when the model expects it and the template did not render it; never twice."""
    bos = tokenizer.bos_token_id
    if wants_bos(tokenizer) and (not ids or ids[0] != bos):
        ids, marks = [bos, *ids], [bos_mark, *marks]
    while len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids, marks = ids[1:], marks[1:]
    return ids, marks


def _tokenize_pieces(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Slow tokenizers have no offsets: tokenize the text piece by piece at the span boundaries.

    Returns ids and, per token, whether it lies in a span. Boundaries fall on special tokens or
    whitespace in every supported template, so the pieces tokenize as the whole text would.
    """
    cuts = sorted({0, len(text), *(x for span in spans for x in span)})
    ids: list[int] = []
    inside: list[bool] = []
    for a, b in zip(cuts, cuts[1:]):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        in_span = any(s <= a and b <= e for s, e in spans)
        ids += piece
        inside += [in_span] * len(piece)
    return _fix_bos(tokenizer, ids, inside, False)


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]], text: str, train_on: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the assistant turns to train on: content + end-of-turn token.

    The search for turn i starts after the rendered prompt for messages[:i] (with the generation
    prompt), so a short answer is never matched inside a header or an earlier turn.
    """
    eot = end_of_turn_token(tokenizer)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        turns = turns[-1:]
    spans = []
    for i in turns:
        prompt = render_text(tokenizer, messages[:i], add_generation_prompt=True)
        begin = len(prompt) if text.startswith(prompt) else (spans[-1][1] if spans else 0)
        content = messages[i]["content"]
        start = text.find(content, begin)
        if start < 0:
            raise EncodingRejected(f"the chat template changed assistant turn {i}; cannot locate it")
        end_content = start + len(content)
        eot_at = text.find(eot, end_content)
        if eot_at < 0 or text[end_content:eot_at].strip():
            raise EncodingRejected(f"assistant turn {i} is not closed by the end-of-turn token {eot!r}")
        # The space a template puts before the answer (Llama-2: "[/INST] answer") is the first
        # thing the model generates: it belongs to the answer (SentencePiece may emit it alone).
        spans.append((max(begin, len(text[:start].rstrip(" "))), eot_at + len(eot)))
    return spans


def _encode(tokenizer: Any, messages: Sequence[dict[str, str]], train_on: str) -> dict[str, list[int]]:
    msgs = fold_system(tokenizer, list(messages))
    text = render_text(tokenizer, msgs)
    spans = [] if train_on == "all" else assistant_spans(tokenizer, msgs, text, train_on)
    if getattr(tokenizer, "is_fast", True):
        ids, offsets = _tokenize(tokenizer, text)
        inside = [e > s and any(s < span_end and e > span_start for span_start, span_end in spans) for s, e in offsets]
    else:
        ids, inside = _tokenize_pieces(tokenizer, text, spans)
    labels = list(ids) if train_on == "all" else [x if keep else IGNORE_INDEX for x, keep in zip(ids, inside)]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def encode_messages(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    max_seq_len: int,
    train_on: str = "assistant",
    system: str | None = None,
) -> dict[str, list[int]]:
    """Encode one conversation for training: input_ids, labels, attention_mask (lists of ints).

    input_ids are exactly the tokenizer's `apply_chat_template(messages, tokenize=True)` for the
    normalized messages. Labels equal input_ids on assistant content plus its end-of-turn token and
    are IGNORE_INDEX elsewhere. train_on: "assistant" (every assistant turn), "last" or "all".
    system: a system prompt used when the conversation has none.
    Raises EncodingRejected when the example cannot be trained on (reason in the message).
    """
    return encode_with_info(tokenizer, messages, max_seq_len=max_seq_len, train_on=train_on, system=system)[0]


def encode_with_info(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    max_seq_len: int,
    train_on: str = "assistant",
    system: str | None = None,
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """encode_messages plus what truncation did: dropped_turns, trimmed_chars, cut_tokens.

    Too long: the oldest exchanges go first (a system prompt stays), then the left of the last
    user turn, then (a huge system prompt or answer) the left of the token sequence: the latest
    answer and its end-of-turn token always survive when anything does.
    """
    msgs = normalize_messages(tokenizer, messages, system, fold=False)  # folded after truncation
    info = {"dropped_turns": 0, "trimmed_chars": 0, "cut_tokens": 0}
    head = 1 if msgs[0]["role"] == "system" else 0
    enc = _encode(tokenizer, msgs, train_on)
    while len(enc["input_ids"]) > max_seq_len and _n_exchanges(msgs[head:]) > 1:
        before = len(msgs)
        msgs = msgs[:head] + _drop_first_exchange(msgs[head:])
        info["dropped_turns"] += before - len(msgs)
        enc = _encode(tokenizer, msgs, train_on)
    if len(enc["input_ids"]) > max_seq_len:
        msgs, enc, info["trimmed_chars"] = _trim_last_prompt(tokenizer, msgs, max_seq_len, train_on)
    if len(enc["input_ids"]) > max_seq_len:
        enc, info["cut_tokens"] = _cut_left(tokenizer, enc, max_seq_len)
    if not any(x != IGNORE_INDEX for x in enc["labels"][1:]):
        raise EncodingRejected(f"no trained token left within max_seq_len={max_seq_len}")
    return enc, info


def _trim_last_prompt(tokenizer: Any, msgs: list[dict[str, str]], max_seq_len: int, train_on: str) -> tuple[list[dict[str, str]], dict[str, list[int]], int]:
    """Cut the fewest characters from the left of the last user turn so the example fits."""
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        return msgs, _encode(tokenizer, msgs, train_on), 0
    u, content = users[-1], msgs[users[-1]]["content"]

    def with_cut(k: int) -> list[dict[str, str]]:
        out = [dict(m) for m in msgs]
        out[u]["content"] = content[k:].lstrip()
        return out

    lo, hi = 0, len(content)
    if len(_encode(tokenizer, with_cut(hi), train_on)["input_ids"]) > max_seq_len:
        return with_cut(hi), _encode(tokenizer, with_cut(hi), train_on), hi
    while lo < hi:  # smallest cut that fits
        mid = (lo + hi) // 2
        if len(_encode(tokenizer, with_cut(mid), train_on)["input_ids"]) <= max_seq_len:
            hi = mid
        else:
            lo = mid + 1
    return with_cut(lo), _encode(tokenizer, with_cut(lo), train_on), lo


def _cut_left(tokenizer: Any, enc: dict[str, list[int]], max_seq_len: int) -> tuple[dict[str, list[int]], int]:
    """Keep the last tokens; a leading BOS stays first."""
    bos = tokenizer.bos_token_id
    keep_bos = bos is not None and enc["input_ids"][:1] == [bos]
    room = max_seq_len - int(keep_bos)
    cut = len(enc["input_ids"]) - int(keep_bos) - room
    ids, labels = enc["input_ids"][-room:], enc["labels"][-room:]
    if keep_bos:
        ids, labels = [bos, *ids], [IGNORE_INDEX, *labels]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}, cut


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
