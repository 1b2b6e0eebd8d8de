"""Ollama Modelfile: the Go TEMPLATE, run through Go's real text/template, equals the HF template's text."""
from __future__ import annotations

import pytest

from ta_export.modelfile import (
    ModelfileSettings,
    check_template,
    default_system,
    hf_prompt_text,
    modelfile_value,
    ollama_commands,
    render_modelfile,
    template_tokens,
)
from ta_export.ollama_templates import go_template, stop_strings
from ta_export.runs import ExportError
from ta_train.chat_families import BAICHUAN2_TEMPLATE, CHATML_TEMPLATE, LLAMA2_TEMPLATE, LLAMA3_TEMPLATE
from tests.gotemplate import build_renderer, render
from tests.ollama_modelfile import ModelfileSyntaxError, parse_modelfile
from tests.tokenizers import fresh_tokenizer, shared_template

COURSE = "You are the TA of ML 101.\nAnswer from the course; say you do not know otherwise."
ONE = [{"role": "user", "content": "What is a gradient?"}]
SEVERAL = [
    {"role": "user", "content": "What is a gradient?"},
    {"role": "assistant", "content": "The direction of steepest ascent.\n\nSee lecture 2."},
    {"role": "user", "content": "学习率是什么？"},
    {"role": "assistant", "content": "步长 (step size) 😀."},
    {"role": "user", "content": "  And\tmomentum?  "},
]


def baichuan2_standin():
    tok = fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<reserved_106>", "<reserved_107>"]})
    tok.chat_template = BAICHUAN2_TEMPLATE
    return tok


# (family, tokenizer maker): real templates where a real tokenizer ships one, ta's family templates otherwise.
TOKENIZERS = {
    "chatml-smollm2": ("chatml", lambda: fresh_tokenizer("smollm2", "chatml")),
    "chatml-qwen2.5": ("chatml", lambda: fresh_tokenizer("qwen3", "chatml", shared_template("qwen2.5-instruct.jinja"))),
    "chatml-ta": ("chatml", lambda: fresh_tokenizer("smollm2", "chatml", CHATML_TEMPLATE)),
    "llama3-meta": ("llama3", lambda: fresh_tokenizer("llama3", "llama3", shared_template("llama-3-instruct.jinja"))),
    "llama3-ta": ("llama3", lambda: fresh_tokenizer("llama3", "llama3", LLAMA3_TEMPLATE)),
    "llama2-meta": ("llama2", lambda: fresh_tokenizer("llama2", "llama2", shared_template("llama-2-chat.jinja"))),
    "llama2-ta": ("llama2", lambda: fresh_tokenizer("llama2", "llama2", LLAMA2_TEMPLATE)),
    "baichuan2-ta": ("baichuan2", baichuan2_standin),
}


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory):
    return build_renderer(tmp_path_factory.mktemp("go"))


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_go_template_renders_exactly_the_training_prompt(name, go_renderer):
    family, make = TOKENIZERS[name]
    tok = make()
    check_template(tok, family)
    template = go_template(family, template_tokens(tok))
    cases, expected = [], []
    for turns in (ONE, SEVERAL):
        msgs = [dict(m, content=m["content"].strip()) for m in turns]  # clients send what training normalized
        system = [{"role": "system", "content": COURSE}]
        # no system anywhere; the Modelfile's SYSTEM (Ollama adds it); the request's own system message
        cases += [{"messages": msgs}, {"messages": msgs, "modelfile_system": COURSE}, {"messages": system + msgs, "modelfile_system": "ignored"}]
        expected += [hf_prompt_text(tok, msgs), hf_prompt_text(tok, system + msgs), hf_prompt_text(tok, system + msgs)]
    cases.append({"messages": [{"role": "system", "content": COURSE}, *ONE], "legacy": True})  # /api/generate form
    expected.append(hf_prompt_text(tok, [{"role": "system", "content": COURSE}, *ONE]))
    got = render(go_renderer, template, cases)
    for case, ours, theirs in zip(cases, got, expected):
        assert ours == theirs, (case, ours, theirs)


def test_templates_strip_only_a_bos_the_tokenizer_adds_itself():
    llama3 = fresh_tokenizer("llama3", "llama3", shared_template("llama-3-instruct.jinja"))
    assert template_tokens(llama3).lead == ""  # the GGUF's add_bos_token adds <|begin_of_text|>
    assert hf_prompt_text(llama3, ONE).startswith("<|start_header_id|>user")
    smol = fresh_tokenizer("smollm2", "chatml")
    assert default_system(smol) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert default_system(fresh_tokenizer("smollm2", "chatml", CHATML_TEMPLATE)) == ""


def test_a_template_that_is_not_the_family_layout_is_refused():
    dated = fresh_tokenizer("llama3", "llama3", shared_template("llama-3.1-instruct.jinja"))
    with pytest.raises(ExportError, match="does not lay out conversations as the llama3 family"):
        check_template(dated, "llama3")


def test_unsupported_family_is_a_clear_error():
    with pytest.raises(ValueError, match="no Ollama template; supported: chatml, llama3, llama2, baichuan2"):
        go_template("gemma", template_tokens(fresh_tokenizer("smollm2", "chatml")))


def test_modelfile_has_from_template_system_parameters_and_real_stops():
    tok = fresh_tokenizer("smollm2", "chatml")
    text = render_modelfile("./model-q4_k_m.gguf", tok, "chatml", COURSE, ModelfileSettings(repeat_penalty=1.05, num_ctx=384))
    lines = text.splitlines()
    assert "FROM ./model-q4_k_m.gguf" in lines
    assert f'SYSTEM """{COURSE}"""' in text and 'TEMPLATE """{{ if .Messages }}' in text
    assert {"PARAMETER temperature 0.3", "PARAMETER repeat_penalty 1.05", "PARAMETER num_ctx 384"} <= set(lines)
    assert [x for x in lines if x.startswith("PARAMETER stop")] == ['PARAMETER stop "<|im_end|>"']
    assert "Human:" not in text and "Assistant:" not in text
    assert stop_strings("llama2", "</s>") == ["</s>", "[INST]"]
    assert stop_strings("llama3", "<|eot_id|>") == ["<|eot_id|>"]
    assert ollama_commands("ta-ml101", "exports/v1/Modelfile") == ["ollama create ta-ml101 -f exports/v1/Modelfile", "ollama run ta-ml101"]


def test_the_parser_model_reads_modelfiles_as_ollama_does():
    """Cases whose reading by Ollama's ParseFile is known (its tests and code), for the model in tests/."""
    text = 'FROM  ./a b.gguf  \n# note\nPARAMETER stop "x "\nPARAMETER stop """<|im_end|>"""\nSYSTEM """\nTwo\nlines "q".\n"""\nTEMPLATE """"""\n'
    assert parse_modelfile(text) == [("model", "./a b.gguf"), ("stop", "x "), ("stop", "<|im_end|>"),
                                     ("system", '\nTwo\nlines "q".\n'), ("template", "")]
    assert parse_modelfile('FROM m\nSYSTEM """ends in a quote""""') == [("model", "m"), ("system", 'ends in a quote"')]
    assert parse_modelfile('FROM m\nSYSTEM """a"""\nSYSTEM b"""\n') == [("model", "m"), ("system", "a"), ("system", 'b"""')]
    for bad in ('FROM m\nSYSTEM """a"""\nb"""\n', 'FROM m\nSYSTEM """open', 'FROM m\nSYSTEM "open\n', "SYSTEM x\n", "FROM m\nBOGUS x\n"):
        with pytest.raises(ModelfileSyntaxError):
            parse_modelfile(bad)


READ_BACK = [
    'Say "hi"', 'ends in a quote"', 'ends in two""', 'ends in three"""', 'a """triple""" mid-line', '"starts with a quote',
    '""starts with two', '"""starts with three', 'multi\nline "quoted"\nlast"', 'tab\tinside', "  spaces around  ",
    "CRLF\r\nline", "学习率 😀 ünïcode", "#not a comment", "x\n\n\ny", 'line ending in two""\nnext', '"""',
    '"', '""',
]
NO_FORM = ['line one ends in three"""\nline two', 'x"""  \t\ny', '"""\n', "bell\x07", "no\u00a0break space",
           "zero\u200bwidth", "line\u2028separator", "vertical\x0btab", "nul\x00"]


def _read(value: str) -> str | None:
    try:
        commands = parse_modelfile(f"FROM m\nSYSTEM {value}\nPARAMETER num_ctx 8\n")
    except ModelfileSyntaxError:
        return None
    return commands[1][1] if commands[1][0] == "system" and len(commands) == 3 else None


@pytest.mark.parametrize("text", READ_BACK)
@pytest.mark.parametrize("prefer", [(), ("quoted",), ("bare", "quoted")])
def test_modelfile_values_read_back_unchanged(text, prefer):
    assert _read(modelfile_value("SYSTEM", text, prefer)) == text


@pytest.mark.parametrize("text", NO_FORM)
def test_text_no_modelfile_form_reads_back_is_refused_naming_the_field(text):
    assert all(_read(form.format(text)) != text for form in ("{}", '"{}"', '"""{}"""'))  # truly no form
    with pytest.raises(ExportError, match=r"^SYSTEM \(data.system_prompt\): line 1"):
        modelfile_value("SYSTEM (data.system_prompt)", text)


@pytest.mark.parametrize("stop", ['"', '""', '"x', 'x"'])
def test_a_stop_of_quotes_does_not_swallow_the_next_lines(stop):
    value = modelfile_value("PARAMETER stop", stop, ("quoted",))
    text = f"FROM m\nPARAMETER stop {value}\nPARAMETER stop <|im_end|>\nPARAMETER num_ctx 8\n"
    assert parse_modelfile(text) == [("model", "m"), ("stop", stop), ("stop", "<|im_end|>"), ("num_ctx", "8")]


def test_refusals_say_what_and_where():
    with pytest.raises(ExportError, match=r'TEMPLATE: line 2 of 3 ends in """, where Ollama\'s Modelfile parser would end the value'):
        modelfile_value("TEMPLATE", 'one\ntwo"""\nthree')
    with pytest.raises(ExportError, match=r"SYSTEM: line 2, column 3 holds '\\xa0' \(U\+00A0\), which Ollama's Modelfile parser drops"):
        modelfile_value("SYSTEM", "ok\nab\u00a0c")


def test_rendered_modelfile_reads_back_as_written(tmp_path):
    tok = fresh_tokenizer("smollm2", "chatml")
    system = 'You are the TA of "ML 101".\nQuote the course: """loss""" is what we minimize.\nSay "I don\'t know"'
    gguf = str(tmp_path / "my exports" / "model.gguf")
    text = render_modelfile(gguf, tok, "chatml", system, ModelfileSettings(num_ctx=384))
    assert parse_modelfile(text) == [
        ("model", gguf), ("template", go_template("chatml", template_tokens(tok))), ("system", system),
        ("temperature", "0.3"), ("repeat_penalty", "1.05"), ("num_ctx", "384"),
        *[("stop", s) for s in stop_strings("chatml", tok.eos_token)],
    ]
    with pytest.raises(ExportError, match="SYSTEM \\(data.system_prompt\\): line 1 of 2"):
        render_modelfile(gguf, tok, "chatml", 'Answer like this: """\nthen stop', ModelfileSettings())
