"""A Python model of how Ollama's Modelfile parser (`parser.ParseFile` in ollama/ollama) reads a file,
for tests: Ollama is not installed here, so the export's Modelfiles are read back with this instead.

Behaviour modelled (Ollama's parser reads the file one character at a time):
- a line starts with a command name (letters) followed by a space or tab; `#` starts a comment line;
  `PARAMETER` takes a name (letters, digits, `_`), `MESSAGE` a role, before the value;
- a value runs to a line break, but ends there only if the text read so far, with the whitespace
  around it trimmed, is a whole value: bare, or opening and closing with the same quote (`\"\"\"` is
  tried before `"`); otherwise the line break joins the value. Spaces and tabs never end a value;
- quotes are stripped, nothing is unescaped; characters Go's `strconv.IsPrint` rejects (other than the
  spaces, tabs and line breaks handled above) are dropped;
- a file without FROM, an unknown command or an unfinished value is an error.
"""
from __future__ import annotations

import unicodedata

COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", "requires"}


class ModelfileSyntaxError(ValueError):
    pass


def go_is_print(ch: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def _whole_value(raw: str) -> str | None:
    """The value `raw` stands for once trimmed, or None while it is an unfinished quoted value."""
    text = raw.strip()
    for quote in ('"""', '"'):
        if text.startswith(quote):
            closed = len(text) >= 2 * len(quote) and text.endswith(quote)
            return text[len(quote) : len(text) - len(quote)] if closed else None
    return text


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """[(command, value)] as Ollama reads them: FROM is ("model", path), PARAMETER k v is (k, v),
    MESSAGE role text is ("message", "role: text")."""
    commands: list[tuple[str, str]] = []
    mode, word, value, name, role = "start", "", "", "", ""
    for ch in text:
        newline, blank = ch in "\r\n", ch in " \t"
        if mode == "comment":
            mode = "start" if newline else "comment"
        elif mode == "start":
            if ch == "#":
                mode = "comment"
            elif not (newline or blank):
                mode, word = "name", ch if go_is_print(ch) else ""
        elif mode in ("name", "parameter", "message"):
            allowed = ch.isascii() and (ch.isalpha() or (mode == "parameter" and (ch.isdigit() or ch == "_")))
            if allowed:
                word += ch
            elif not blank:
                raise ModelfileSyntaxError(f"bad character {ch!r} after {word!r}")
            elif mode == "name":
                if word.lower() not in COMMANDS:
                    raise ModelfileSyntaxError(f"unknown command {word!r}")
                lower = word.lower()
                name = "model" if lower == "from" else lower
                mode, word, value = ("parameter" if lower == "parameter" else "message" if lower == "message" else "value"), "", ""
            elif mode == "parameter":
                mode, name, word, value = "value", word, "", ""
            else:
                if word not in ("system", "user", "assistant"):
                    raise ModelfileSyntaxError(f"bad message role {word!r}")
                mode, role, word, value = "value", word, "", ""
        else:  # value
            if newline or blank:
                whole = _whole_value(value)
                if whole is None or blank:
                    value += ch
                    continue
                commands.append((name, f"{role}: {whole}" if role else whole))
                mode, role = "start", ""
            elif go_is_print(ch):
                value += ch
    if mode == "value":
        whole = _whole_value(value)
        if whole is None:
            raise ModelfileSyntaxError(f"unfinished value {value!r}")
        commands.append((name, f"{role}: {whole}" if role else whole))
    elif mode not in ("start", "comment"):
        raise ModelfileSyntaxError(f"file ends inside {mode} {word!r}")
    if not any(cmd == "model" for cmd, _ in commands):
        raise ModelfileSyntaxError("no FROM line")
    return commands
