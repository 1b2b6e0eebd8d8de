"""Readers for QA-derived open datasets: SQuAD (and CMRC 2018, DRCD), C3, GSM8K, BoolQ,
CommonsenseQA and Natural Questions (simplified), yielding SFT records as in
:mod:`ta_data.readers.open_data` (same contract, same Reject rules, same signature).

Prompts are built with the ``*_PROMPT`` templates below; multiple-choice answers are the
option letter and text ("B. <text>").
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ta_data.readers.course import read_lines, source_name
from ta_data.readers.open_data import (
    Bad,
    Turn,
    at,
    checked_turns,
    convert_items,
    iter_items,
    list_field,
    sft_record,
    text_field,
)
from ta_data.records import Reject

CONTEXT_PROMPT = "Context:\n{context}\n\nQuestion: {question}"
"""User turn for reading comprehension (SQuAD/CMRC/DRCD, BoolQ)."""

CHOICE_PROMPT = "{context}\n\nQuestion: {question}\n{options}"
"""User turn for C3; ``options`` is one "A. text" line per choice."""

REFUSAL = "I don't know based on the context."
"""Answer for unanswerable SQuAD v2 items (``meta["kind"]`` "refusal")."""

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_HTML_TOKEN_RE = re.compile(r"^</?[A-Za-z][A-Za-z0-9]*>$")


def _options(choices: list[str]) -> str:
    """"A. first\\nB. second..." for the choice texts."""
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def _string_list(value: object, name: str) -> list[str]:
    """``value`` as a non-empty list of non-empty stripped strings, or Bad naming ``name``."""
    if not isinstance(value, list) or not value:
        raise Bad(f"field {name!r} is not a non-empty list")
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise Bad(f"field {name!r} holds an empty or non-string entry")
    return [item.strip() for item in value]


# --------------------------------------------------------------------------- SQuAD family


def _answer_texts(answers: object) -> tuple[list[str], bool]:
    """(answer texts, HF-dict layout) from ``[{text, ...}]``, ``[str]`` or ``{text: [...]}``."""
    if isinstance(answers, dict):
        texts = answers.get("text")
        if not isinstance(texts, list):
            raise Bad("field 'answers' has no 'text' list")
        items, hf_dict = texts, True
    elif isinstance(answers, list):
        items, hf_dict = answers, False
    else:
        raise Bad("field 'answers' is not a list")
    out: list[str] = []
    for index, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise Bad(f"answers[{index}]: text is not a string")
        out.append(text.strip())
    return out, hf_dict


def _squad_turns(context: str, qa: dict, *, empty_is_refusal: bool) -> tuple[list[Turn], str]:
    """Turns for one question; unanswerable (``is_impossible``) -> refusal."""
    question = text_field(qa, "question", empty_reason="empty question")
    prompt = CONTEXT_PROMPT.format(context=context, question=question)
    if qa.get("is_impossible") is True:
        return [("user", prompt), ("assistant", REFUSAL)], "refusal"
    if "answers" not in qa:
        raise Bad("missing field 'answers'")
    texts, hf_dict = _answer_texts(qa["answers"])
    if not texts:
        if hf_dict and empty_is_refusal:  # HF squad_v2: unanswerable = empty answer lists
            return [("user", prompt), ("assistant", REFUSAL)], "refusal"
        raise Bad("no answer")
    answer = next((text for text in texts if text), "")
    if not answer:
        raise Bad("empty answer")
    return [("user", prompt), ("assistant", answer)], "open"


def _squad_flat(record: dict) -> tuple[list[Turn], str]:
    """A flattened record: context, question, answers ({text: [...]} or a list)."""
    context = text_field(record, "context", empty_reason="empty context")
    return _squad_turns(context, record, empty_is_refusal=True)


def _squad_nested(
    document: dict, path: str | Path, rejects: list[Reject], dataset: str
) -> Iterator[dict]:
    """Records from the official ``{data: [{title, paragraphs: [{context, qas}]}]}`` layout."""
    source = source_name(Path(path))

    def reject(where: str, reason: str, record: object) -> None:
        rejects.append(Reject(source, None, f"{where}: {reason}", record))

    if not isinstance(document.get("data"), list):
        rejects.append(Reject(source, None, "data: missing or not a list", None))
        return
    for a, article in enumerate(document["data"]):
        where = f"data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            reject(where, "missing or non-list field 'paragraphs'", article)
            continue
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                reject(where, "missing or empty context", paragraph)
                continue
            if not isinstance(paragraph.get("qas"), list):
                reject(where, "missing or non-list field 'qas'", paragraph)
                continue
            for q, qa in enumerate(paragraph["qas"]):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                try:
                    if not isinstance(qa, dict):
                        raise Bad("not a JSON object")
                    turns, kind = _squad_turns(context.strip(), qa, empty_is_refusal=False)
                    conversations = checked_turns(turns)
                except Bad as exc:
                    reject(where, exc.reason, qa)
                    continue
                yield sft_record(conversations, path, dataset, kind)


def read_squad(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """SQuAD v1/v2 (also CMRC 2018, DRCD): the official nested JSON or flattened records.

    Nested: every ``qas`` item; ``is_impossible: true`` -> refusal, no answers otherwise ->
    Reject "data[i].paragraphs[j].qas[k]: no answer". Flattened (JSON Lines or an array):
    ``answers`` as ``{text: [...], answer_start: [...]}`` (HF; empty lists are SQuAD v2
    unanswerable -> refusal), or a list of strings/``{text}`` (empty -> Reject "no answer").
    """
    name = dataset or "squad"
    if Path(path).suffix.lower() != ".jsonl":
        lines = read_lines(path, [])  # errors are reported by whichever reader runs below
        try:
            document = json.loads("\n".join(lines)) if lines is not None else None
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict):
            yield from _squad_nested(document, path, rejects, name)
            return
    yield from convert_items(path, rejects, name, _squad_flat)


# --------------------------------------------------------------------------- C3


def _choice_turns(context: str, question: str, choices: object, answer: object) -> list[Turn]:
    """Multiple-choice turns; the answer must be one of the choices."""
    texts = _string_list(choices, "choices")
    if not isinstance(answer, str) or not answer.strip():
        raise Bad("empty answer")
    if answer.strip() not in texts:
        raise Bad("answer is not among the choices")
    index = texts.index(answer.strip())
    prompt = CHOICE_PROMPT.format(context=context, question=question, options=_options(texts))
    return [("user", prompt), ("assistant", f"{LETTERS[index]}. {texts[index]}")]


def _c3_document(value: object) -> str:
    """The passage: a list of lines (dialogue turns) joined with newlines, or one string."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return "\n".join(_string_list(value, "document"))


def _c3_question(context: str, item: object) -> list[Turn]:
    """Turns for one question ``{question, choice|choices, answer}``."""
    if not isinstance(item, dict):
        raise Bad("not a JSON object")
    question = text_field(item, "question", empty_reason="empty question")
    choices = item.get("choice", item.get("choices"))
    return _choice_turns(context, question, choices, item.get("answer"))


def read_c3(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """C3: the published ``[[document lines], [{question, choice, answer}], id]`` items
    (one record per question; Rejects name ``[i][1][j]``) or flattened records with
    ``document``, ``question``, ``choices``, ``answer``."""
    name, source = dataset or "c3", source_name(Path(path))
    for line, where, item in iter_items(path, rejects):
        if isinstance(item, dict):
            questions: list[tuple[str, object]] = [(where, item)]
            try:
                context = _c3_document(item.get("document"))
            except Bad as exc:
                rejects.append(Reject(source, line, at(where, exc.reason), item))
                continue
        elif isinstance(item, list) and len(item) >= 2 and isinstance(item[1], list):
            try:
                context = _c3_document(item[0])
            except Bad as exc:
                rejects.append(Reject(source, line, at(f"{where}[0]", exc.reason), item))
                continue
            questions = [(f"{where}[1][{j}]", q) for j, q in enumerate(item[1])]
        else:
            reason = "not a [document, questions, id] item or a JSON object"
            rejects.append(Reject(source, line, at(where, reason), item))
            continue
        for item_where, question in questions:
            try:
                conversations = checked_turns(_c3_question(context, question))
            except Bad as exc:
                rejects.append(Reject(source, line, at(item_where, exc.reason), question))
                continue
            yield sft_record(conversations, path, name)


# --------------------------------------------------------------------------- GSM8K, BoolQ, CSQA


def _gsm8k(record: dict) -> tuple[list[Turn], str]:
    """question -> reasoning + "\\nAnswer: " + the final answer after "####"."""
    question = text_field(record, "question", empty_reason="empty question")
    text = text_field(record, "answer", empty_reason="empty answer")
    reasoning, marker, final = text.rpartition("####")
    if not marker:
        raise Bad("no '####' final answer")
    reasoning, final = reasoning.strip(), final.strip()
    if not final:
        raise Bad("empty answer after '####'")
    answer = f"{reasoning}\nAnswer: {final}" if reasoning else f"Answer: {final}"
    return [("user", question), ("assistant", answer)], "open"


def read_gsm8k(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """GSM8K records: ``question``, ``answer`` (reasoning, then ``#### final``)."""
    yield from convert_items(path, rejects, dataset or "gsm8k", _gsm8k)


def _boolq(record: dict) -> tuple[list[Turn], str]:
    """passage + question -> "Yes." / "No." (``answer`` bool, or SuperGLUE ``label`` 0/1)."""
    question = text_field(record, "question", empty_reason="empty question")
    passage = text_field(record, "passage", empty_reason="empty passage")
    value = record.get("answer", record.get("label"))
    if not isinstance(value, bool) and value not in (0, 1):
        raise Bad("answer is not true/false")
    if not question.endswith("?"):
        question += "?"
    prompt = CONTEXT_PROMPT.format(context=passage, question=question)
    return [("user", prompt), ("assistant", "Yes." if value else "No.")], "open"


def read_boolq(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """BoolQ records: ``question``, ``passage``, ``answer`` (true/false)."""
    yield from convert_items(path, rejects, dataset or "boolq", _boolq)


def _commonsenseqa(record: dict) -> tuple[list[Turn], str]:
    """question.stem with lettered question.choices -> "<answerKey>. <text>"."""
    question = record.get("question")
    if not isinstance(question, dict):
        raise Bad("field 'question' is not an object")
    stem = text_field(question, "stem", empty_reason="empty question")
    labels: list[str] = []
    texts: list[str] = []
    for index, choice in enumerate(list_field(question, "choices")):
        if not isinstance(choice, dict):
            raise Bad(f"question.choices[{index}] is not an object")
        labels.append(text_field(choice, "label", empty_reason=f"question.choices[{index}]: empty label"))
        texts.append(text_field(choice, "text", empty_reason=f"question.choices[{index}]: empty text"))
    key = text_field(record, "answerKey", empty_reason="empty answer")
    if key not in labels:
        raise Bad(f"answerKey {key!r} is not a choice label")
    options = "\n".join(f"{label}. {text}" for label, text in zip(labels, texts))
    answer = f"{key}. {texts[labels.index(key)]}"
    return [("user", f"{stem}\n{options}"), ("assistant", answer)], "open"


def read_commonsenseqa(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """CommonsenseQA records: ``question: {stem, choices: [{label, text}]}``, ``answerKey``."""
    yield from convert_items(path, rejects, dataset or "commonsenseqa", _commonsenseqa)


# --------------------------------------------------------------------------- Natural Questions


def _span(tokens: list[str], span: object, where: str) -> str:
    """Text of tokens ``[start_token, end_token)`` without HTML tag tokens; Bad if invalid."""
    if not isinstance(span, dict):
        raise Bad(f"{where} is not an object")
    start, end = span.get("start_token"), span.get("end_token")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(tokens)):
        raise Bad(f"{where}: token offsets {start!r}..{end!r} out of range")
    return " ".join(t for t in tokens[start:end] if t and not _HTML_TOKEN_RE.match(t)).strip()


def _natural_questions(record: dict) -> tuple[list[Turn], str]:
    """question_text -> the short answer(s), else the yes/no answer, else the long answer."""
    question = text_field(record, "question_text", empty_reason="empty question")
    tokens = text_field(record, "document_text", empty_reason="empty document").split(" ")
    annotation = list_field(record, "annotations")[0]
    if not isinstance(annotation, dict):
        raise Bad("annotations[0] is not an object")
    shorts = annotation.get("short_answers") or []
    if not isinstance(shorts, list):
        raise Bad("annotations[0].short_answers is not a list")
    texts = [_span(tokens, s, f"annotations[0].short_answers[{i}]") for i, s in enumerate(shorts)]
    answer = ", ".join(text for text in texts if text)
    yes_no = annotation.get("yes_no_answer")
    if not answer and yes_no in ("YES", "NO"):
        answer = "Yes." if yes_no == "YES" else "No."
    long_answer = annotation.get("long_answer")
    if not answer and isinstance(long_answer, dict) and long_answer.get("start_token", -1) >= 0:
        answer = _span(tokens, long_answer, "annotations[0].long_answer")
    if not answer:
        raise Bad("no short or long answer")
    if not question.endswith("?"):
        question += "?"
    return [("user", question), ("assistant", answer)], "open"


def read_natural_questions(
    path: str | Path, rejects: list[Reject], *, dataset: str | None = None
) -> Iterator[dict]:
    """Natural Questions simplified records: ``question_text``, ``document_text`` and
    ``annotations[0]`` (short answers as space-token offsets, long answer as fallback).

    The user turn is the question alone (closed-book): the whole page is too long for SFT.
    """
    yield from convert_items(path, rejects, dataset or "natural_questions", _natural_questions)


__all__ = [
    "CHOICE_PROMPT",
    "CONTEXT_PROMPT",
    "REFUSAL",
    "read_boolq",
    "read_c3",
    "read_commonsenseqa",
    "read_gsm8k",
    "read_natural_questions",
    "read_squad",
]
