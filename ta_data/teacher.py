"""Stage 7, ``teacher`` back-end: instruction examples written by a teacher LLM, kept only when grounded.

For every chunk and every requested kind, the teacher (any OpenAI-compatible endpoint, see
:mod:`ta_data.teacher_client`) is asked, in the chunk's language, for one question and its answer
taken from the chunk, as a JSON object. The reply is parsed (JSON, else ``Q:``/``A:`` lines), and the
answer must share at least ``config.min_grounding`` of its character n-grams with the chunk, else
the example goes to ``rejects`` with its score. Answers about a transcript cite the chunk's start
as ``[HH:MM:SS]`` (appended when the teacher left it out; stamps outside the chunk are removed).

Chunks are used by duck typing: any object (or mapping) with ``id, text, source, chapter, start,
end, lang``, such as :class:`ta_data.chunk.Chunk` or a parsed ``chunks.jsonl`` line.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .demo_parse import seconds_to_hms
from .records import Reject
from .teacher_client import TeacherClient, TeacherConfig, TeacherError, TeacherStats

__all__ = [
    "KINDS",
    "TeacherClient",
    "TeacherConfig",
    "TeacherError",
    "TeacherStats",
    "build_messages",
    "cite_timestamp",
    "grounding_score",
    "parse_reply",
    "teacher_synthesize",
]

KINDS: tuple[str, ...] = ("answer", "extract", "summary", "quiz")
"""Kinds the teacher writes (``meta.kind`` of the records)."""

REQUEST_REJECT_STATUSES = frozenset({400, 413, 422})
"""Statuses that condemn one request (e.g. a chunk longer than the teacher's context), not the run."""

_SYSTEM = {
    "en": (
        "You write training examples for a course's teaching assistant. Use only facts stated in "
        "the course excerpt you are given; never add outside knowledge. Reply with a single JSON "
        'object {"question": "...", "answer": "..."} and nothing else.'
    ),
    "zh": (
        "你为一门课程的助教模型编写训练样例。只能使用所给课程片段中明确写出的内容，不要添加片段以外的知识。"
        '只回复一个 JSON 对象 {"question": "...", "answer": "..."}，不要输出其他内容。'
    ),
}

_TASKS = {
    "en": {
        "answer": "Write one question a student might ask that this excerpt answers, and answer it "
        "in 1-3 sentences using the excerpt's own words.",
        "extract": "Write an instruction asking for the key points of this excerpt, and answer it "
        "with 2-4 short bullet points copied or condensed from the excerpt.",
        "summary": "Write an instruction asking for a short summary of this excerpt, and answer it "
        "with a summary of 1-3 sentences that reuses the excerpt's wording.",
        "quiz": "Write one quiz question (short answer or multiple choice with options A-D) that "
        "this excerpt answers, and give the correct answer with a one-sentence explanation from the excerpt.",
    },
    "zh": {
        "answer": "写一个学生可能会问、且这段课程内容能回答的问题，并用片段中的原话在 1-3 句内回答。",
        "extract": "写一条要求列出这段内容要点的指令，并用 2-4 条简短要点回答，要点取自片段原文。",
        "summary": "写一条要求简要总结这段内容的指令，并用 1-3 句话总结，尽量沿用片段中的措辞。",
        "quiz": "写一道这段内容能回答的测验题（简答题，或带 A-D 选项的选择题），并给出正确答案和一句取自片段的解释。",
    },
}

_TRANSCRIPT = {
    "en": "The excerpt is from a lecture recording and starts at [{stamp}]. End the answer with [{stamp}].",
    "zh": "这段内容来自课堂录音，开始于 [{stamp}]。请在答案末尾注明 [{stamp}]。",
}

_USER = {
    "en": "Course excerpt ({where}):\n<<<\n{text}\n>>>\n\nTask: {task}{transcript}\n"
    'Reply in English with JSON only: {{"question": "...", "answer": "..."}}',
    "zh": "课程片段（{where}）：\n<<<\n{text}\n>>>\n\n任务：{task}{transcript}\n"
    '只用中文回复 JSON：{{"question": "...", "answer": "..."}}',
}

_STAMP_RE = re.compile(r"\[(\d{1,2}):([0-5]\d):([0-5]\d)\]")
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_QA_LINE_RE = re.compile(r"^\s*(?:\*\*)?(q|question|问题?|a|answer|答案?)(?:\*\*)?\s*[:：]\s*(?:\*\*\s*)?(.*)$", re.I)
_QUESTION_KEYS = ("question", "q", "instruction", "问题")
_ANSWER_KEYS = ("answer", "a", "output", "response", "答案", "回答")


def chunk_field(chunk: Any, name: str) -> Any:
    """``chunk.name`` or ``chunk[name]``; a clear error when the chunk has neither."""
    if isinstance(chunk, Mapping):
        if name in chunk:
            return chunk[name]
    elif hasattr(chunk, name):
        return getattr(chunk, name)
    raise TypeError(f"chunk {chunk!r:.80} has no field {name!r} (chunks need id, text, source, chapter, start, end, lang)")


def chunk_lang(chunk: Any) -> str:
    """``zh`` for Chinese chunks, ``en`` for everything else (prompt language and n-gram size)."""
    lang = chunk_field(chunk, "lang")
    return "zh" if isinstance(lang, str) and lang.lower().startswith("zh") else "en"


def build_messages(chunk: Any, kind: str) -> list[dict[str, str]]:
    """System + user messages asking for one ``kind`` example from ``chunk``, in its language."""
    if kind not in KINDS:
        raise ValueError(f"teacher kind must be one of {KINDS}, got {kind!r}")
    lang = chunk_lang(chunk)
    source, chapter = chunk_field(chunk, "source"), chunk_field(chunk, "chapter")
    where = f"{source} > {chapter}" if chapter else str(source)
    start = chunk_field(chunk, "start")
    transcript = "" if start is None else " " + _TRANSCRIPT[lang].format(stamp=seconds_to_hms(start))
    user = _USER[lang].format(
        where=where, text=chunk_field(chunk, "text"), task=_TASKS[lang][kind], transcript=transcript
    )
    return [{"role": "system", "content": _SYSTEM[lang]}, {"role": "user", "content": user}]


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(f"- {_as_text(v)}" for v in value)
    return "" if value is None else str(value).strip()


def _from_object(obj: Any) -> tuple[str, str] | None:
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    question = next((_as_text(lowered[k]) for k in _QUESTION_KEYS if k in lowered), "")
    answer = next((_as_text(lowered[k]) for k in _ANSWER_KEYS if k in lowered), "")
    return (question, answer) if question and answer else None


def _from_lines(text: str) -> tuple[str, str] | None:
    parts: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = _QA_LINE_RE.match(line)
        if match:
            label = match.group(1).lower()
            current = "q" if label in ("q", "question", "问", "问题") else "a"
            if current in parts:  # a second Q/A pair: keep the first
                break
            parts[current] = [match.group(2)]
        elif current is not None:
            parts[current].append(line)
    question = "\n".join(parts.get("q", [])).strip()
    answer = "\n".join(parts.get("a", [])).strip()
    return (question, answer) if question and answer else None


def parse_reply(reply: str) -> tuple[str, str]:
    """(question, answer) from a teacher reply: a JSON object (fenced or amid prose), else Q:/A: lines.

    Raises ``ValueError`` saying what was missing when neither form yields both fields.
    """
    text = _FENCE_RE.sub("", reply.strip())
    decoder = json.JSONDecoder()
    for start in [i for i, ch in enumerate(text) if ch == "{"]:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        found = _from_object(obj)
        if found:
            return found
    found = _from_lines(text)
    if found:
        return found
    raise ValueError(f"no question and answer in the teacher's reply (JSON or Q:/A: lines): {reply[:160]!r}")


def _normalize(text: str, lang: str) -> str:
    text = _STAMP_RE.sub(" ", unicodedata.normalize("NFKC", text)).casefold()
    text = re.sub(r"[\W_]+", " ", text).strip()
    return text.replace(" ", "") if lang == "zh" else text


def _ngrams(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def grounding_score(answer: str, context: str, n: int, lang: str = "en") -> float:
    """Share of the answer's distinct character n-grams that occur in ``context`` (0..1).

    Both texts are NFKC-normalized, case-folded, stripped of ``[HH:MM:SS]`` stamps and punctuation
    (whitespace too for Chinese). An answer shorter than ``n`` scores 1 when it occurs in the context.
    """
    a, c = _normalize(answer, lang), _normalize(context, lang)
    grams = _ngrams(a, n)
    if not grams:
        return 1.0 if a and a in c else 0.0
    return len(grams & _ngrams(c, n)) / len(grams)


def cite_timestamp(answer: str, start: float, end: float | None, lang: str) -> str:
    """``answer`` citing ``[HH:MM:SS]`` of ``start``; stamps outside ``[start, end]`` are removed."""
    stop = start if end is None else end

    def keep_if_inside(match: re.Match[str]) -> str:
        h, m, s = (int(g) for g in match.groups())
        seconds = h * 3600 + m * 60 + s
        return match.group(0) if int(start) <= seconds <= stop else ""

    cited = re.sub(r"[ \t]{2,}", " ", _STAMP_RE.sub(keep_if_inside, answer)).strip()
    stamp = f"[{seconds_to_hms(start)}]"
    if stamp in cited:
        return cited
    return f"{cited}{stamp}" if lang == "zh" else f"{cited} {stamp}"


def teacher_synthesize(
    chunks: Iterable[Any],
    config: TeacherConfig,
    kinds: Sequence[str] = KINDS,
    rejects: list[Reject] | None = None,
    client: TeacherClient | None = None,
) -> Iterator[dict[str, Any]]:
    """Alpaca ``sft.jsonl`` records written by the teacher, one per chunk and kind when grounded.

    Each record is ``{instruction: question, input: chunk text, output: answer, meta}`` with
    ``meta = {source, timestamp (HH:MM:SS or None), kind, chunk, grounding}``. Replies that cannot be
    parsed or are not grounded, and requests the server refuses with 400/413/422, are appended to
    ``rejects``; other server failures raise :class:`TeacherError` (after retries).
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"teacher kinds {bad} are not among {KINDS}")
    rejects = [] if rejects is None else rejects
    client = client or TeacherClient(config)
    for chunk in chunks:
        text, source = chunk_field(chunk, "text"), chunk_field(chunk, "source")
        start, end, lang = chunk_field(chunk, "start"), chunk_field(chunk, "end"), chunk_lang(chunk)
        chunk_id = chunk_field(chunk, "id")
        for kind in kinds:
            where = {"chunk": chunk_id, "kind": kind}
            try:
                reply = client.chat(build_messages(chunk, kind))
            except TeacherError as exc:
                if exc.status not in REQUEST_REJECT_STATUSES:
                    raise
                rejects.append(Reject(str(source), None, f"teacher refused the request: {exc}", where))
                continue
            try:
                question, answer = parse_reply(reply)
            except ValueError as exc:
                rejects.append(Reject(str(source), None, f"teacher reply unparseable: {exc}", {**where, "reply": reply}))
                continue
            n = config.ngram_zh if lang == "zh" else config.ngram_en
            score = grounding_score(answer, text, n, lang)
            if score < config.min_grounding:
                reason = f"answer not grounded in the chunk: {n}-gram overlap {score:.2f} < {config.min_grounding}"
                record = {**where, "question": question, "answer": answer, "grounding": round(score, 4)}
                rejects.append(Reject(str(source), None, reason, record))
                continue
            stamp = None if start is None else seconds_to_hms(start)
            if start is not None:
                answer = cite_timestamp(answer, float(start), None if end is None else float(end), lang)
            yield {
                "instruction": question,
                "input": text,
                "output": answer,
                "meta": {
                    "source": source,
                    "timestamp": stamp,
                    "kind": kind,
                    "chunk": chunk_id,
                    "grounding": round(score, 4),
                },
            }
