"""Text analysis for the template synthesizer: key sentences, salient terms, phrasing choice.

All of it is extractive and deterministic. A chunk's candidate sentences are its sentences
(ta_data.sentences) that state something: not a question, heading, table row or code fence,
5..80 units long; a list marker or a speaker/Q/A label in front ("- ", "A: ", "答：") is
dropped, so the sentence stays a substring of the chunk.

Salience: a term is a Latin word of 3+ letters outside a stop list, or a CJK character bigram;
its weight is how often it occurs in the chunk. A sentence scores the summed weight of its
distinct terms that occur at least twice, over the square root of its distinct terms + 1
(long sentences do not win on length alone). Ties go to the earlier sentence.

Key term of a sentence (what a question asks about and a cloze blanks): a repeated Latin word
or word pair, or a repeated CJK run of 2-4 characters without function characters, the one
with the highest (occurrences in the chunk) x (length); ties go to the earlier. A CJK run whose
boundary cuts a bigram at least as frequent as itself is not a term ("批量梯" of 批量梯度).
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ta_data.quality import count_units, is_cjk, script_counts
from ta_data.sentences import split_sentences

MIN_UNITS = 5
"""A candidate sentence has at least this many units (words + CJK characters)."""
MAX_UNITS = 80
"""... and at most this many (one answer stays short)."""

_LABEL_RE = re.compile(
    r"^(?:[-*+•]\s+|\d+[.)]\s+|>\s*|(?:Q|A|Question|Answer|User|Assistant|Teacher|Student)\s*[:：]\s*"
    r"|(?:问|答|老师|学生)\s*[:：]\s*)+",
    re.IGNORECASE,
)
_SKIP_RE = re.compile(r"^(?:#{1,6}\s|\||```|~~~)")
_LATIN_RE = re.compile(r"[A-Za-z][A-Za-z'’-]+")
_CJK_RUN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
STOP_EN = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be been
    being this that these those it its it's we you they he she i me my our your their them his her
    not no yes do does did done can could will would should may might must shall have has had
    into onto over under than so such very more most less much many some any all each every both
    which what when where who whom whose why how there here also only just one two use used using
    about after before while because between same other another own out up down off again still
    let lets get got make makes made way thing things too per via yet even often well like""".split()
)
_STOP_ZH = frozenset(
    "的了是在和就也都很会我你他她们这那一个不有把被让给要说到上下着过吗呢吧啊么与及或而其之为以于所"
    "太越更还又再才已将从向但若因此该它地得每"
)


@dataclass(frozen=True)
class Sentence:
    """A candidate sentence: its text (a substring of the chunk), position, salience score."""

    text: str
    index: int
    score: float


def chunk_language(lang: str, text: str) -> str:
    """"zh" or "en" for phrasing: the chunk's language; for mixed/unknown text, zh when its Chinese
    characters at least match its Latin words ("什么是 learning rate 衰减？": 5 vs 2 -> zh; "What does
    张量 mean in PyTorch?": 2 vs 5 -> en), the same with or without the optional lingua."""
    if lang in ("zh", "en"):
        return lang
    cjk = script_counts(text).cjk
    return "zh" if cjk and cjk >= count_units(text) - cjk else "en"


def _terms(text: str) -> list[str]:
    """Salience terms of ``text``: lower-cased content words and CJK bigrams, in order."""
    words = [w.lower() for w in _LATIN_RE.findall(text) if len(w) >= 3 and w.lower() not in STOP_EN]
    bigrams = [run[i : i + 2] for run in _CJK_RUN_RE.findall(text) for i in range(len(run) - 1)]
    return words + bigrams


def candidate_sentences(text: str) -> list[Sentence]:
    """The chunk's candidate sentences with salience scores, in text order."""
    kept: list[str] = []
    for piece in split_sentences(text):
        body = _LABEL_RE.sub("", piece.text).strip()
        if not body or _SKIP_RE.match(body) or body[-1] in "?？":
            continue
        if MIN_UNITS <= count_units(body) <= MAX_UNITS:
            kept.append(body)
    weights = Counter(term for body in kept for term in _terms(body))
    out = []
    for index, body in enumerate(kept):
        distinct = set(_terms(body))
        total = sum(weights[t] for t in distinct if weights[t] > 1)
        out.append(Sentence(body, index, total / math.sqrt(len(distinct) + 1)))
    return out


def ranked(sentences: Sequence[Sentence]) -> list[Sentence]:
    """Sentences by salience, highest first; ties keep text order."""
    return sorted(sentences, key=lambda s: (-s.score, s.index))


def _latin_candidates(sentence: str) -> list[tuple[str, int]]:
    """Content words (4+ letters) and pairs of adjacent content words, with their positions."""
    words = list(_LATIN_RE.finditer(sentence))
    found: list[tuple[str, int]] = []
    for i, match in enumerate(words):
        word = match.group(0)
        if len(word) >= 4 and word.lower() not in STOP_EN:
            found.append((word, match.start()))
        if i + 1 < len(words):
            nxt = words[i + 1]
            pair = sentence[match.start() : nxt.end()]
            gap = sentence[match.end() : nxt.start()]
            if gap == " " and word.lower() not in STOP_EN and nxt.group(0).lower() not in STOP_EN:
                found.append((pair, match.start()))
    return found


def _cjk_candidates(sentence: str) -> list[tuple[str, int]]:
    """CJK runs of 2-4 characters without a function character, with their positions."""
    found = []
    for run in _CJK_RUN_RE.finditer(sentence):
        text = run.group(0)
        for size in (4, 3, 2):
            for i in range(len(text) - size + 1):
                gram = text[i : i + size]
                if not any(ch in _STOP_ZH for ch in gram):
                    found.append((gram, run.start() + i))
    return found


def _cuts_a_word(sentence: str, at: int, term: str, chunk_text: str, occurrences: int) -> bool:
    """True when a CJK term ends inside a word: the bigram across its start or end boundary is at
    least as frequent in the chunk as the term ("批量梯" before 度: 梯度 is more frequent)."""
    before = sentence[at - 1 : at + 1] if at > 0 else ""
    after = sentence[at + len(term) - 1 : at + len(term) + 1]
    return any(
        len(pair) == 2 and is_cjk(pair[0]) and is_cjk(pair[1]) and chunk_text.count(pair) >= occurrences
        for pair in (before, after)
    )


def key_term(sentence: str, chunk_text: str, avoid: frozenset[str] = frozenset()) -> str | None:
    """The sentence's most salient repeated term (exactly as written in it), or None.

    A term must occur at least twice in the chunk, and neither contain nor be part of a term in
    ``avoid`` (lower-cased), so "学习" and "学习率太" are not asked after "学习率".
    """
    lower = chunk_text.lower()
    best: tuple[float, int, str] | None = None  # (-score, position, term)
    for term, at in _latin_candidates(sentence) + _cjk_candidates(sentence):
        occurrences = lower.count(term.lower())
        if occurrences < 2 or any(term.lower() in used or used in term.lower() for used in avoid):
            continue
        if is_cjk(term[0]) and _cuts_a_word(sentence, at, term, chunk_text, occurrences):
            continue
        length = sum(2 if is_cjk(c) else 1 for c in term) if is_cjk(term[0]) else len(term.split()) * 4
        candidate = (-occurrences * length, at, term)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None


def join_sentences(sentences: Sequence[str]) -> str:
    """Sentences as one text: no space between two Chinese ones, else one space."""
    text = ""
    for sentence in sentences:
        if text and not (is_cjk(sentence[0]) and not text[-1].isascii()):
            text += " "
        text += sentence
    return text


def pick(options: Sequence[str], *keys: object) -> str:
    """One of ``options``, chosen by a stable hash of ``keys`` (not Python's salted hash)."""
    digest = hashlib.blake2b(repr(keys).encode("utf-8"), digest_size=8).digest()
    return options[int.from_bytes(digest, "big") % len(options)]


PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "answer": {
        "en": (
            "According to the course material, what is said about {term}?",
            "What does the passage tell us about {term}?",
            "Based on the context, what do we learn about {term}?",
            "How does the material describe {term}?",
        ),
        "zh": (
            "根据课程资料，关于“{term}”讲了什么？",
            "材料里是怎么说{term}的？",
            "结合上下文，关于{term}我们能知道什么？",
            "这段内容对“{term}”有什么说明？",
        ),
    },
    "extract": {
        "en": (
            "List the key points of the passage.",
            "What are the main points of this course material?",
            "Extract the key points from the context as a bulleted list.",
        ),
        "zh": (
            "列出这段材料的要点。",
            "这段课程内容的主要观点有哪些？",
            "请从上下文中提取关键要点，用列表列出。",
        ),
    },
    "summary": {
        "en": (
            "Summarize the passage in a few sentences.",
            "Give a short summary of this course material.",
            "Briefly summarize the context.",
        ),
        "zh": (
            "用几句话概括这段材料。",
            "请简要总结这段课程内容。",
            "概括一下上面材料的主要内容。",
        ),
    },
    "quiz": {
        "en": (
            "Fill in the blank using the passage: {cloze}",
            "Complete the sentence from the course material: {cloze}",
            "Which term fills the blank? {cloze}",
        ),
        "zh": (
            "根据材料填空：{cloze}",
            "请补全下面这句话：{cloze}",
            "下面句子的空白处应填什么？{cloze}",
        ),
    },
}
"""Instruction phrasings per kind and language ({term}: the key term, {cloze}: the blanked sentence)."""

BLANK = "____"
