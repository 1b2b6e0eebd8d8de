"""Ollama Modelfile for an exported GGUF: the family's Go TEMPLATE, the course SYSTEM, sampling, stops.

The TEMPLATE is one of `ta_export.ollama_templates`, filled with the run tokenizer's BOS/EOS strings
and the default system prompt its HF template writes (SmolLM2, Qwen2.5 write one when none is
given). Before writing, `check_template` proves the run's own chat template lays conversations out as
the family does: the Go templates are tested byte-for-byte against the family layouts, so a run
whose template differs (e.g. Llama-3.1's dated system header) is refused rather than exported with a
prompt format that training never saw.

Every value is written so that Ollama's Modelfile parser reads back exactly that text (`modelfile_value`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ta_export.ollama_templates import TemplateTokens, go_template, stop_strings
from ta_export.runs import ExportError

_PROBE_SYSTEM = "ta-probe-system-7c1e"
_PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is a gradient?"},),
    (
        {"role": "user", "content": "What is a gradient?"},
        {"role": "assistant", "content": "The slope of the loss."},
        {"role": "user", "content": "And the learning rate?"},
    ),
)


def default_system(tokenizer: Any) -> str:
    """The system prompt the tokenizer's template writes when a conversation has none ("" if none).

    Found by rendering a conversation with a probe system prompt and one without: if the second is
    the first with some other text in the probe's place, that text is the default.
    """
    from ta_train.chat_families import supports_system

    if not supports_system(tokenizer):
        return ""
    user = [{"role": "user", "content": "u"}]
    with_probe = tokenizer.apply_chat_template([{"role": "system", "content": _PROBE_SYSTEM}, *user], tokenize=False)
    without = tokenizer.apply_chat_template(user, tokenize=False)
    prefix, _, suffix = with_probe.partition(_PROBE_SYSTEM)
    if without.startswith(prefix) and without.endswith(suffix) and len(without) > len(prefix) + len(suffix):
        return without[len(prefix) : len(without) - len(suffix)]
    return ""


def template_tokens(tokenizer: Any) -> TemplateTokens:
    """BOS/EOS strings, the leading text (BOS only when the tokenizer does not add it), the default system."""
    from ta_train.chat_families import wants_bos

    bos = tokenizer.bos_token or ""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "u"}], tokenize=False, add_generation_prompt=True)
    # Only a BOS the template writes itself (SmolLM2's BOS string is also its turn opener <|im_start|>).
    writes_bos = "bos_token" in (tokenizer.chat_template or "") and bool(bos) and text.startswith(bos)
    lead = bos if writes_bos and not wants_bos(tokenizer) else ""
    return TemplateTokens(eos=tokenizer.eos_token, bos=bos, lead=lead, default_system=default_system(tokenizer))


def hf_prompt_text(tokenizer: Any, messages: Sequence[dict[str, str]], chat_template: str | None = None) -> str:
    """What training's prompt encoding renders (ta_train.chat), minus a BOS the tokenizer adds itself."""
    from ta_train.chat import normalize_messages
    from ta_train.chat_families import wants_bos

    msgs = normalize_messages(tokenizer, messages, require_answer=False)
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, chat_template=chat_template)
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and wants_bos(tokenizer) and text.startswith(bos) else text


def check_template(tokenizer: Any, family: str) -> None:
    """Refuse a tokenizer whose chat template is not the family's layout (so the Go TEMPLATE would differ)."""
    from ta_train.chat_families import family_spec

    reference = family_spec(family).template
    default = default_system(tokenizer)
    for probe in _PROBES:
        for system in (_PROBE_SYSTEM, None):
            msgs = ([{"role": "system", "content": system}] if system else []) + list(probe)
            ref_msgs = msgs if system or not default else [{"role": "system", "content": default}, *msgs]
            ours, ref = hf_prompt_text(tokenizer, msgs), hf_prompt_text(tokenizer, ref_msgs, reference)
            if ours != ref:
                raise ExportError(
                    f"the run's chat template does not lay out conversations as the {family} family does, so an "
                    f"Ollama TEMPLATE would prompt the model differently from training.\n  run's template: {ours!r}\n"
                    f"  {family} layout:   {ref!r}"
                )


@dataclass(frozen=True)
class ModelfileSettings:
    temperature: float = 0.3
    repeat_penalty: float = 1.05  # seed: 1.05-1.1
    num_ctx: int = 2048  # the training max_seq_len


def _lines(text: str) -> list[str]:
    """The text's lines as Ollama's parser sees them: only \\n, \\r and \\r\\n break a line."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _reads_back(form: str, text: str) -> bool:
    """Whether Ollama's parser reads `text` written in `form` back unchanged (characters checked apart).

    The parser has no escapes. It reads a value up to a line break, trims the whitespace around it
    and takes it whole if it is bare, or if it opens and closes with the same quote (one double
    quote, or three), which it then strips; otherwise it keeps reading across the line break. So:
    bare text is one line, not blank, without whitespace at its ends or a leading double quote;
    "quoted" text is one line whose quoted form does not open with three double quotes (text
    starting with two, or exactly one double quote, written as three: the parser would read an
    unclosed triple-quoted value and swallow the lines after it); triple-quoted text may hold three
    double quotes anywhere and end in one, but no line before its last may end in three (the value
    would end there).
    """
    lines = _lines(text)
    if form == "bare":
        return len(lines) == 1 and bool(text) and text == text.strip(" \t") and not text.startswith('"')
    if form == "quoted":
        return len(lines) == 1 and not ('"' + text + '"').startswith('"""')
    return not any(line.rstrip(" \t").endswith('"""') for line in lines[:-1])


_FORMS = {"bare": "{}", "quoted": '"{}"', "triple": '"""{}"""'}


def modelfile_value(field: str, text: str, prefer: Sequence[str] = ()) -> str:
    """`text` written so that Ollama's parser reads it back unchanged: in the first of `prefer` ("bare",
    "quoted") that allows it, else triple-quoted.

    Raises ExportError naming `field` when no form reads back: a character the parser drops (it keeps
    Go's printable characters, i.e. letters, marks, numbers, punctuation, symbols and the space, plus
    tabs and line breaks), or a line before the last that ends in three double quotes.
    """
    lines = _lines(text)
    for number, line in enumerate(lines, start=1):
        for column, ch in enumerate(line, start=1):
            if not (ch.isprintable() or ch == "\t"):
                raise ExportError(
                    f"{field}: line {number}, column {column} holds {ch!r} (U+{ord(ch):04X}), which Ollama's Modelfile "
                    f"parser drops (it keeps printable characters, tabs and line breaks); remove or replace it"
                )
    for form in (*prefer, "triple"):
        if _reads_back(form, text):
            return _FORMS[form].format(text)
    bad = next(n for n, line in enumerate(lines[:-1], start=1) if line.rstrip(" \t").endswith('"""'))
    raise ExportError(
        f'{field}: line {bad} of {len(lines)} ends in """, where Ollama\'s Modelfile parser would end the value '
        f"(it has no escapes); reword that line, e.g. put a character after the quotes"
    )


def render_modelfile(
    gguf: str, tokenizer: Any, family: str, system_prompt: str | None, settings: ModelfileSettings
) -> str:
    """The Modelfile text: FROM, TEMPLATE, SYSTEM (when set), PARAMETERs, one `stop` per string."""
    check_template(tokenizer, family)
    template = go_template(family, template_tokens(tokenizer))
    lines = [
        f"# Written by ta_export for the {family} chat family.",
        f"FROM {modelfile_value('FROM', gguf, ('bare', 'quoted'))}",
        f"TEMPLATE {modelfile_value('TEMPLATE', template)}",
    ]
    if system_prompt and system_prompt.strip():
        lines.append(f"SYSTEM {modelfile_value('SYSTEM (data.system_prompt)', system_prompt.strip())}")
    lines += [
        f"PARAMETER temperature {settings.temperature}",
        f"PARAMETER repeat_penalty {settings.repeat_penalty}",
        f"PARAMETER num_ctx {settings.num_ctx}",
    ]
    lines += [f"PARAMETER stop {modelfile_value('PARAMETER stop', s, ('quoted',))}" for s in stop_strings(family, tokenizer.eos_token)]
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, gguf: Path, tokenizer: Any, run_cfg: Any) -> Path:
    """Write `out_dir/Modelfile` for a run's config (system prompt, max_seq_len, repetition penalty)."""
    settings = ModelfileSettings(repeat_penalty=min(max(run_cfg.demo.repetition_penalty, 1.05), 1.1), num_ctx=run_cfg.data.max_seq_len)
    rel = f"./{gguf.name}" if gguf.parent.resolve() == out_dir.resolve() else str(gguf.resolve())
    text = render_modelfile(rel, tokenizer, run_cfg.model.chat_family.value, run_cfg.data.system_prompt, settings)
    path = out_dir / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path


def ollama_commands(name: str, modelfile: Path) -> list[str]:
    """The two lines a user runs: create the Ollama model from the Modelfile, then chat with it."""
    return [f"ollama create {name} -f {modelfile}", f"ollama run {name}"]
