"""Read open instruction datasets in their published layouts into SFT conversation records.

Every reader is ``(path, rejects, *, dataset=None) -> Iterator[dict]`` and yields records in
the project's SFT contract (ShareGPT-with-role form)::

    {"conversations": [{"role": "system"|"user"|"assistant", "content": str}, ...],
     "meta": {"source": <file name>, "dataset": <name>, "timestamp": None, "kind": "open"}}

``meta["kind"]`` is "refusal" for the refusal answers made from unanswerable SQuAD v2 items.
``meta["dataset"]`` is the format name unless ``dataset`` is given (:func:`read_open_dataset`
passes the name it was called with, e.g. "cmrc2018").

Files are JSON Lines (one record a line, Rejects carry the 1-based line) or one JSON document
(an array of records, or the nested SQuAD/C3 layouts; Rejects carry line None and a reason
that starts with the item's path, e.g. ``"[3]: missing field 'output'"``). ``.jsonl`` is read
as lines, ``.json`` as one document; any other suffix is read as one document when the whole
file is a JSON array, else as lines. Every record not kept (missing field, wrong type, empty
question or answer, broken turn order) becomes a :class:`Reject`; nothing is dropped silently.

Chat-style formats live here; the QA-derived ones (SQuAD/CMRC/DRCD, C3, GSM8K, BoolQ,
CommonsenseQA, Natural Questions) live in :mod:`ta_data.readers.open_data_qa`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from ta_data.readers.course import read_lines, source_name
from ta_data.records import Reject, json_lines

Turn = tuple[str, object]
"""(role, content) before checking: content may be any JSON value until :func:`checked_turns`."""

Converter = Callable[[dict], tuple[list[Turn], str]]
"""One record -> (turns, kind); raises :class:`Bad` for a record that cannot be kept."""

ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}
"""ShareGPT ``from`` (and chat ``role``) values -> contract roles; anything else is rejected."""


class Bad(ValueError):
    """A record that cannot be kept; ``reason`` becomes the Reject's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- loading


def load_json(path: str | Path, rejects: list[Reject]) -> object | None:
    """The whole file as one JSON value, or None plus one file-level Reject."""
    lines = read_lines(path, rejects)
    if lines is None:
        return None
    try:
        return json.loads("\n".join(lines))
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        rejects.append(Reject(source_name(Path(path)), None, reason, None))
        return None


def iter_items(path: str | Path, rejects: list[Reject]) -> Iterator[tuple[int | None, str, object]]:
    """(line, item path, record) for each record of a JSON Lines file or a JSON array file.

    JSON Lines give (1-based line, "", record) and skip blank lines; a JSON array gives
    (None, "[i]", item). Undecodable lines and a non-array JSON document are Rejects.
    """
    source = source_name(Path(path))
    lines = read_lines(path, rejects)
    if lines is None:
        return
    suffix = Path(path).suffix.lower()
    if suffix != ".jsonl" and (suffix == ".json" or "\n".join(lines).lstrip().startswith("[")):
        try:
            document = json.loads("\n".join(lines))
        except json.JSONDecodeError as exc:
            if suffix == ".json":
                reason = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
                rejects.append(Reject(source, None, reason, None))
                return
        else:
            if not isinstance(document, list):
                rejects.append(Reject(source, None, "JSON document is not an array", None))
                return
            for index, item in enumerate(document):
                yield None, f"[{index}]", item
            return
    for number, record in json_lines(lines, source, rejects):
        yield number, "", record


def at(where: str, reason: str) -> str:
    """``reason`` prefixed with the item path ``where`` (nothing to add for JSON Lines)."""
    return f"{where}: {reason}" if where else reason


# --------------------------------------------------------------------------- checking


def text_field(record: dict, key: str, *, empty_reason: str | None = None) -> str:
    """``record[key]`` stripped; Bad if missing, not a string, or empty (when ``empty_reason``)."""
    if key not in record or record[key] is None:
        raise Bad(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise Bad(f"field {key!r} is not a string")
    value = value.strip()
    if not value and empty_reason is not None:
        raise Bad(empty_reason)
    return value


def optional_text(record: dict, key: str) -> str:
    """``record[key]`` stripped, "" when missing or null; Bad when present but not a string."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Bad(f"field {key!r} is not a string")
    return value.strip()


def list_field(record: dict, key: str) -> list:
    """``record[key]`` as a non-empty list; Bad if missing, not a list, or empty."""
    if key not in record or record[key] is None:
        raise Bad(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, list):
        raise Bad(f"field {key!r} is not a list")
    if not value:
        raise Bad(f"field {key!r} is empty")
    return value


def checked_turns(turns: list[Turn]) -> list[dict[str, str]]:
    """Contract turns from (role, content) pairs, or Bad saying what is wrong.

    An optional system turn comes first (an empty one is left out); then user and assistant
    alternate, starting with user and ending with assistant; no user or assistant turn may be
    empty. Turn numbers in reasons are 0-based positions in ``turns``.
    """
    out: list[dict[str, str]] = []
    for index, (role, content) in enumerate(turns):
        if not isinstance(content, str):
            raise Bad(f"turn {index}: content is not a string")
        content = content.strip()
        if role == "system":
            if index != 0:
                raise Bad(f"turn {index}: system turn after the first turn")
            if content:
                out.append({"role": "system", "content": content})
            continue
        dialogue = [turn for turn in out if turn["role"] != "system"]
        expected = "user" if len(dialogue) % 2 == 0 else "assistant"
        if role != expected:
            raise Bad(f"turn {index}: expected a {expected} turn, got {role}")
        if not content:
            raise Bad(f"turn {index}: empty {'question' if role == 'user' else 'answer'}")
        out.append({"role": role, "content": content})
    if not any(turn["role"] == "user" for turn in out):
        raise Bad("no user turn")
    if out[-1]["role"] != "assistant":
        raise Bad("last turn is not an answer")
    return out


def sft_record(
    conversations: list[dict[str, str]], path: str | Path, dataset: str, kind: str = "open"
) -> dict:
    """One record in the SFT contract; ``meta["source"]`` is the file name of ``path``."""
    meta = {"source": Path(path).name, "dataset": dataset, "timestamp": None, "kind": kind}
    return {"conversations": conversations, "meta": meta}


def convert_items(
    path: str | Path, rejects: list[Reject], dataset: str, convert: Converter
) -> Iterator[dict]:
    """Run ``convert`` on every record of ``path``; non-objects and Bad records are Rejects."""
    source = source_name(Path(path))
    for line, where, record in iter_items(path, rejects):
        if not isinstance(record, dict):
            rejects.append(Reject(source, line, at(where, "not a JSON object"), record))
            continue
        try:
            turns, kind = convert(record)
            conversations = checked_turns(turns)
        except Bad as exc:
            rejects.append(Reject(source, line, at(where, exc.reason), record))
            continue
        yield sft_record(conversations, path, dataset, kind)


# --------------------------------------------------------------------------- chat formats


def _alpaca(record: dict) -> tuple[list[Turn], str]:
    """instruction [+ blank line + input] -> output; optional LLaMA-Factory system/history."""
    question = text_field(record, "instruction", empty_reason="empty instruction")
    extra = optional_text(record, "input")
    if extra:
        question = f"{question}\n\n{extra}"
    answer = text_field(record, "output", empty_reason="empty answer")
    turns: list[Turn] = [("system", optional_text(record, "system"))]
    history = record.get("history") or []
    if not isinstance(history, list):
        raise Bad("field 'history' is not a list")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise Bad(f"history[{index}] is not a [question, answer] pair")
        turns += [("user", pair[0]), ("assistant", pair[1])]
    return turns + [("user", question), ("assistant", answer)], "open"


def read_alpaca(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """Alpaca records: ``instruction``, ``input`` (optional), ``output``."""
    yield from convert_items(path, rejects, dataset or "alpaca", _alpaca)


def _sharegpt(record: dict) -> tuple[list[Turn], str]:
    """``conversations: [{from, value}, ...]`` with from human/gpt/system."""
    turns: list[Turn] = []
    for index, turn in enumerate(list_field(record, "conversations")):
        if not isinstance(turn, dict):
            raise Bad(f"conversations[{index}] is not an object")
        speaker = turn.get("from")
        if speaker not in ROLES:
            raise Bad(f"conversations[{index}]: unknown speaker {speaker!r}")
        if "value" not in turn:
            raise Bad(f"conversations[{index}]: missing field 'value'")
        turns.append((ROLES[speaker], turn["value"]))
    return turns, "open"


def read_sharegpt(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """ShareGPT records: ``conversations`` of ``{from: human|gpt|system, value}``."""
    yield from convert_items(path, rejects, dataset or "sharegpt", _sharegpt)


def _openorca(record: dict) -> tuple[list[Turn], str]:
    """system_prompt (may be empty), question, response."""
    system = optional_text(record, "system_prompt")
    question = text_field(record, "question", empty_reason="empty question")
    answer = text_field(record, "response", empty_reason="empty answer")
    return [("system", system), ("user", question), ("assistant", answer)], "open"


def read_openorca(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """OpenOrca records: ``system_prompt``, ``question``, ``response``."""
    yield from convert_items(path, rejects, dataset or "openorca", _openorca)


def _firefly(record: dict) -> tuple[list[Turn], str]:
    """``conversation: [{human, assistant}, ...]``, or the older single-turn kind/input/target."""
    if "conversation" not in record and "input" in record and "target" in record:
        question = text_field(record, "input", empty_reason="empty question")
        answer = text_field(record, "target", empty_reason="empty answer")
        return [("user", question), ("assistant", answer)], "open"
    turns: list[Turn] = []
    for index, turn in enumerate(list_field(record, "conversation")):
        if not isinstance(turn, dict):
            raise Bad(f"conversation[{index}] is not an object")
        for key in ("human", "assistant"):
            if key not in turn:
                raise Bad(f"conversation[{index}]: missing field {key!r}")
        turns += [("user", turn["human"]), ("assistant", turn["assistant"])]
    return turns, "open"


def read_firefly(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """Firefly records: multi-turn ``conversation`` or single-turn ``kind``/``input``/``target``."""
    yield from convert_items(path, rejects, dataset or "firefly", _firefly)


def _ultrachat(record: dict) -> tuple[list[Turn], str]:
    """``data: [user, assistant, ...]`` alternating, or ``messages: [{role, content}, ...]``."""
    if "messages" in record:
        turns: list[Turn] = []
        for index, turn in enumerate(list_field(record, "messages")):
            if not isinstance(turn, dict):
                raise Bad(f"messages[{index}] is not an object")
            role = turn.get("role")
            if role not in ("system", "user", "assistant"):
                raise Bad(f"messages[{index}]: unknown role {role!r}")
            if "content" not in turn:
                raise Bad(f"messages[{index}]: missing field 'content'")
            turns.append((role, turn["content"]))
        return turns, "open"
    data = list_field(record, "data")
    if len(data) % 2:
        raise Bad("field 'data' has an odd number of turns (last question unanswered)")
    return [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(data)], "open"


def read_ultrachat(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """UltraChat records: ``data`` (alternating strings) or ``messages`` (UltraChat 200k)."""
    yield from convert_items(path, rejects, dataset or "ultrachat", _ultrachat)


def _mathinstruct(record: dict) -> tuple[list[Turn], str]:
    """instruction -> output (``source`` names the sub-dataset and is not kept)."""
    question = text_field(record, "instruction", empty_reason="empty instruction")
    return [("user", question), ("assistant", text_field(record, "output", empty_reason="empty answer"))], "open"


def read_mathinstruct(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """MathInstruct records: ``instruction``, ``output``, ``source``."""
    yield from convert_items(path, rejects, dataset or "mathinstruct", _mathinstruct)


# --------------------------------------------------------------------------- dispatch

FORMATS = (
    "alpaca",
    "sharegpt",
    "openorca",
    "firefly",
    "ultrachat",
    "squad",
    "c3",
    "gsm8k",
    "boolq",
    "commonsenseqa",
    "natural_questions",
    "mathinstruct",
)
"""Format names :func:`read_open_dataset` accepts (plus the :data:`ALIASES`)."""

ALIASES = {
    "squad_v2": "squad",
    "cmrc2018": "squad",
    "drcd": "squad",
    "nq": "natural_questions",
    "ultrachat_200k": "ultrachat",
}
"""Dataset names read with another format's reader; ``meta["dataset"]`` keeps the alias."""


def read_open_dataset(path: str | Path, fmt: str, rejects: list[Reject]) -> Iterator[dict]:
    """Records of ``path`` read as format ``fmt`` (one of :data:`FORMATS` or :data:`ALIASES`).

    An unknown format raises ValueError at once (a caller's mistake, not a data problem).
    """
    from ta_data.readers import open_data_qa  # imported here: open_data_qa imports this module

    name = fmt.strip().lower()
    base = ALIASES.get(name, name)
    readers = {
        "alpaca": read_alpaca,
        "sharegpt": read_sharegpt,
        "openorca": read_openorca,
        "firefly": read_firefly,
        "ultrachat": read_ultrachat,
        "mathinstruct": read_mathinstruct,
        "squad": open_data_qa.read_squad,
        "c3": open_data_qa.read_c3,
        "gsm8k": open_data_qa.read_gsm8k,
        "boolq": open_data_qa.read_boolq,
        "commonsenseqa": open_data_qa.read_commonsenseqa,
        "natural_questions": open_data_qa.read_natural_questions,
    }
    if base not in readers:
        known = ", ".join(sorted((*FORMATS, *ALIASES)))
        raise ValueError(f"unknown open dataset format {fmt!r}; known: {known}")
    return readers[base](path, rejects, dataset=name)
