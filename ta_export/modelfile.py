"""Ollama Modelfile for an exported GGUF: the family's Go TEMPLATE, the course SYSTEM, sampling, stops.

The TEMPLATE is one of `ta_export.ollama_templates`, filled with the run tokenizer's BOS/EOS strings
and the default system prompt its HF template writes (SmolLM2, Qwen2.5 write one when none is
given). Before writing, `check_template` proves the run's own chat template lays conversations out as
the family does: the Go templates are tested byte-for-byte against the family layouts, so a run
whose template differs (e.g. Llama-3.1's dated system header) is refused rather than exported with a
prompt format that training never saw.
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


def _quoted_block(keyword: str, text: str) -> str:
    if '"""' in text:
        raise ExportError(f'{keyword} text contains """, which a Modelfile cannot quote')
    return f'{keyword} """{text}"""'


def render_modelfile(
    gguf: str, tokenizer: Any, family: str, system_prompt: str | None, settings: ModelfileSettings
) -> str:
    """The Modelfile text: FROM, TEMPLATE, SYSTEM (when set), PARAMETERs, one `stop` per string."""
    check_template(tokenizer, family)
    template = go_template(family, template_tokens(tokenizer))
    lines = [f"# Written by ta_export for the {family} chat family.", f"FROM {gguf}", _quoted_block("TEMPLATE", template)]
    if system_prompt and system_prompt.strip():
        lines.append(_quoted_block("SYSTEM", system_prompt.strip()))
    lines += [
        f"PARAMETER temperature {settings.temperature}",
        f"PARAMETER repeat_penalty {settings.repeat_penalty}",
        f"PARAMETER num_ctx {settings.num_ctx}",
    ]
    lines += [f'PARAMETER stop "{s}"' for s in stop_strings(family, tokenizer.eos_token)]
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
