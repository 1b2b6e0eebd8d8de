"""What each chat family needs from a tokenizer: end-of-turn token, a template when none ships, pad.

The templates below are written for this project from each family's documented format; they are
used only when the tokenizer carries no chat template (Baichuan2-Chat ships none, and some
tokenizer-only packages drop it). A tokenizer's own template always wins, so training, export and
serving render exactly what the model's authors shipped.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

# Llama-2 chat: the system prompt rides inside the first [INST] block between <<SYS>> markers.
LLAMA2_TEMPLATE = (
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- set text = ('<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content']) if (loop.first and sys) else m['content'] -%}"
    "{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)

# Baichuan2-Chat: user turns start with <reserved_106> (id 195), assistant turns with
# <reserved_107> (id 196) and end with eos; no system role, no BOS.
BAICHUAN2_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ '<reserved_106>' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '<reserved_107>' + m['content'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<reserved_107>' }}{%- endif -%}"
)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    end_of_turn: str  # token that closes an assistant turn; a label, and a stop string at inference
    template: str  # used only when the tokenizer ships no chat template


FAMILIES = {
    "chatml": FamilySpec("chatml", "<|im_end|>", CHATML_TEMPLATE),
    "llama3": FamilySpec("llama3", "<|eot_id|>", LLAMA3_TEMPLATE),
    "llama2": FamilySpec("llama2", "</s>", LLAMA2_TEMPLATE),
    "baichuan2": FamilySpec("baichuan2", "</s>", BAICHUAN2_TEMPLATE),
}


def family_spec(family: Any) -> FamilySpec:
    name = getattr(family, "value", family)
    if name not in FAMILIES:
        raise ValueError(f"model.chat_family={name!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def end_of_turn_token(tokenizer: Any) -> str:
    """The family's end-of-turn token recorded on the tokenizer, else its eos token."""
    return getattr(tokenizer, "ta_end_of_turn", None) or tokenizer.eos_token


def prepare_tokenizer(tokenizer: Any, family: Any, pad_token: str | None = None) -> Any:
    """Give `tokenizer` a chat template (the family's when none ships), its end-of-turn token, a pad.

    pad_token: None keeps the tokenizer's pad, else falls back to eos (safe: padding is masked by
    position); a token string selects an existing token (e.g. Llama-3.1's <|finetune_right_pad_id|>,
    Qwen's <|endoftext|>); "add" adds a new <pad> token (the model's embeddings grow to match, the new
    row set to the mean of the others: see ta_train.model.resize_embeddings).
    """
    spec = family_spec(family)
    if not tokenizer.chat_template:
        log.info("tokenizer has no chat template: using ta's %s template", spec.name)
        tokenizer.chat_template = spec.template
    if spec.end_of_turn not in tokenizer.get_vocab():
        raise ValueError(f"end-of-turn token {spec.end_of_turn!r} of family {spec.name} is not in the tokenizer's vocabulary")
    tokenizer.ta_end_of_turn = spec.end_of_turn
    if pad_token == "add":
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    elif pad_token is not None:
        if pad_token not in tokenizer.get_vocab():
            raise ValueError(f"model.pad_token={pad_token!r} is not a token of this tokenizer")
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


_SYSTEM_PROBE = "ta-system-probe-3f9c"
_system_support: dict[str, bool] = {}
_warned: set[str] = set()


def template_key(tokenizer: Any) -> str:
    return hashlib.sha1((tokenizer.chat_template or "").encode()).hexdigest()


def supports_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message (probed once per template)."""
    key = template_key(tokenizer)
    if key not in _system_support:
        probe = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "u"}]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
            _system_support[key] = _SYSTEM_PROBE in text
        except Exception:  # templates signal "no system role" by raising
            _system_support[key] = False
    return _system_support[key]


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every special token's text: content must not contain them (it would inject control tokens)."""
    cached = getattr(tokenizer, "ta_special_strings", None)
    if cached is None:
        found = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        found |= {t for t in tokenizer.all_special_tokens if t}
        cached = tuple(sorted(found, key=len, reverse=True))
        tokenizer.ta_special_strings = cached
    return cached


def wants_bos(tokenizer: Any) -> bool:
    """Whether sequences for this model start with BOS (the tokenizer adds it to plain text)."""
    cached = getattr(tokenizer, "ta_wants_bos", None)
    if cached is None:
        bos = tokenizer.bos_token_id
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        cached = bos is not None and bool(ids) and ids[0] == bos
        tokenizer.ta_wants_bos = cached
    return cached
