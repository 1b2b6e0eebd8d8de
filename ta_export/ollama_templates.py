"""Ollama TEMPLATEs (Go text/template), one per chat family, written to render what training rendered.

How Ollama executes a template that mentions `.Messages`: `.System` is every system message joined
by a blank line (the Modelfile's SYSTEM is added as a system message when a request has none),
`.Messages` is the conversation with consecutive same-role messages merged (system messages
included, so the loops below skip them), `.Response` is empty. Templates without `.Messages`
(old clients of /api/generate) get `.System`, `.Prompt` and `.Response` per exchange: the `else`
branch below renders one exchange.

The leading BOS is not in the text when the model's tokenizer adds it (`add_bos_token`, which the
GGUF carries): llama.cpp adds it once, as training did; writing it too would double it. Later BOS
strings (Llama-2's `<s>` before every `[INST]`) are in the text and tokenize as the special token.
The tests run these through Go's real text/template against the HF template's text.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TemplateTokens:
    """The strings a template writes that vary by tokenizer."""

    eos: str  # Llama-2 / Baichuan2 close an answer with it
    bos: str = ""  # Llama-2 writes it before every later [INST]
    lead: str = ""  # text before the first turn: the BOS when the tokenizer does not add it itself
    default_system: str = ""  # the system prompt the HF template writes when none is given


def _chatml(t: TemplateTokens) -> str:
    default = f"<|im_start|>system\n{t.default_system}<|im_end|>\n" if t.default_system else ""
    system = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}" + default + "{{ end }}"
    turn = '{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    chat = t.lead + system + "{{ range .Messages }}" + turn + "{{ end }}<|im_start|>assistant\n"
    legacy = t.lead + system + "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    return "{{ if .Messages }}" + chat + "{{ else }}" + legacy + "{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>\n{{ end }}"


def _llama3(t: TemplateTokens) -> str:
    def header(role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    system = "{{ if .System }}" + header("system") + "{{ .System }}<|eot_id|>{{ end }}"
    turn = '{{ if ne .Role "system" }}' + header("{{ .Role }}") + "{{ .Content }}<|eot_id|>{{ end }}"
    chat = t.lead + system + "{{ range .Messages }}" + turn + "{{ end }}" + header("assistant")
    legacy = t.lead + system + "{{ if .Prompt }}" + header("user") + "{{ .Prompt }}<|eot_id|>{{ end }}" + header("assistant")
    return "{{ if .Messages }}" + chat + "{{ else }}" + legacy + "{{ end }}{{ .Response }}{{ if .Response }}<|eot_id|>{{ end }}"


def _llama2(t: TemplateTokens) -> str:
    # The system prompt rides inside the first [INST] block; there is no generation prompt.
    sys_block = "{{ if $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}"
    user = (
        "{{ if $first }}" + t.lead + "[INST] " + sys_block + "{{ .Content }} [/INST]{{ $first = false }}"
        "{{ else }}" + t.bos + "[INST] {{ .Content }} [/INST]{{ end }}"
    )
    answer = " {{ .Content }} " + t.eos
    chat = (
        "{{ $first := true }}{{ range .Messages }}"
        '{{ if eq .Role "user" }}' + user + '{{ else if eq .Role "assistant" }}' + answer + "{{ end }}{{ end }}"
    )
    legacy = t.lead + "[INST] " + sys_block.replace("$.", ".") + "{{ .Prompt }} [/INST]"
    return "{{ if .Messages }}" + chat + "{{ else }}" + legacy + "{{ end }}{{ if .Response }} {{ .Response }} " + t.eos + "{{ end }}"


def _baichuan2(t: TemplateTokens) -> str:
    # No system role: training folded the system prompt into the first user turn (ta_train.chat.fold_system).
    fold = "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}"
    chat = (
        "{{ $first := true }}{{ range .Messages }}"
        '{{ if eq .Role "user" }}<reserved_106>' + fold + "{{ .Content }}{{ $first = false }}"
        '{{ else if eq .Role "assistant" }}<reserved_107>{{ .Content }}' + t.eos + "{{ end }}{{ end }}<reserved_107>"
    )
    legacy = "<reserved_106>{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<reserved_107>"
    return t.lead + "{{ if .Messages }}" + chat + "{{ else }}" + legacy + "{{ end }}{{ .Response }}{{ if .Response }}" + t.eos + "{{ end }}"


_BUILDERS = {"chatml": _chatml, "llama3": _llama3, "llama2": _llama2, "baichuan2": _baichuan2}
FAMILIES = tuple(_BUILDERS)


def go_template(family: str, tokens: TemplateTokens) -> str:
    """The Ollama TEMPLATE text for `family` (see the module docstring for what Ollama passes in)."""
    if family not in _BUILDERS:
        raise ValueError(f"chat family {family!r} has no Ollama template; supported: {', '.join(FAMILIES)}")
    return _BUILDERS[family](tokens)


def stop_strings(family: str, eos: str) -> list[str]:
    """Strings that end the model's answer: the family's end-of-turn token, eos, and the next turn's opener."""
    extra = {"chatml": ["<|im_end|>"], "llama3": ["<|eot_id|>"], "llama2": ["</s>", "[INST]"], "baichuan2": ["</s>", "<reserved_106>"]}
    if family not in extra:
        raise ValueError(f"chat family {family!r} has no Ollama template; supported: {', '.join(FAMILIES)}")
    return list(dict.fromkeys([*extra[family], eos]))
