"""Person names for the PII stage: Chinese by surname + context cue, English by cue, both by roster.

A name is only flagged where the text says a person is meant: a cue on one side (王小明*同学*,
*请*李华回答, *Prof.* John Smith, John Smith *asked*) and a boundary or cue on the other. A surname
list alone would flag 高斯, 张量 and 方法; jieba's `nr` tag does too (see bench/RESULTS.md, "Names: rules vs jieba"), so
the detector is rule-based and jieba is not a dependency. Course terms (resources/course_terms.txt)
and everyday surname-initial words (resources/zh_common_words.txt) veto any candidate that
overlaps them, which keeps 牛顿第二定律, 高斯分布 and 高中同学 intact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"

# Right cues: the name ends where one starts. Honorifics also allow a bare surname (李老师).
_HONORIFIC = "同学|老师|教授|助教|先生|女士|博士|师兄|师姐|学长|学姐|主任|院士|讲师|导师"
_VERB = "(?<![小听据])说(?![明法服不])|问(?![题卷候号])|回答|提问|发言|指出|认为|提到|表示|补充|写道|讲到"
RIGHT_CUE = re.compile(f"(?P<hon>{_HONORIFIC})|(?P<verb>{_VERB})")
# Left cues: the name starts where one ends.
LEFT_CUE = re.compile(
    "(?:请|助教|同学|学生|教授|讲师|导师|班长|组长|课代表|联系人|作者|主讲人?|成员|组员|姓名|名字[叫是]?"
    "|我叫|名叫|叫做|感谢|谢谢|致谢|联系|告诉|通知|提醒)[ :：]*"
)
_WEAK_LEFT = frozenset("和与跟及给对向让被把由于替为帮问叫是在找")  # a name may start right after these
_WEAK_RIGHT = frozenset("、的和与及也在是就都")  # ...and end right before these
_LIST_SEP = frozenset("、和与及")
# Characters that (almost) never appear in a given name: function words and cue characters.
_NOT_GIVEN = frozenset(
    "的了是在和与我你他她它们这那个不也都就要会有说问请吗呢吧啊么其或及等被把从对向给让到为"
    "同学师课题章节第次些很更最还又再已将所以因而但如果于且并则即况人地处面分开去来过着得没无非否只才该用做作哪谁怎"
)
_TOP_SURNAMES = 100  # the first 100 lines of zh_surnames.txt are the common tier

_EN_TOK = r"(?:Mc|Mac|O['’])?[A-Z][a-z]+(?:-[A-Z][a-z]+)?"
_EN_NAME = rf"{_EN_TOK}(?: {_EN_TOK}){{0,2}}"
_EN_STRONG = [  # the cue itself says a person follows: keep even a course-term surname (Prof. Taylor)
    re.compile(rf"(?<![A-Za-z])(?:Prof|Professor|Dr|Mr|Mrs|Ms|Mx|Miss|Dean|TA)\.? +({_EN_NAME})"),
    re.compile(rf"(?<![A-Za-z])(?i:my name is|my name's|i am called|call me|name:) *({_EN_NAME})"),
    re.compile(  # lower-case role words only: "the student Laura Clark", not the heading "Teacher Support"
        rf"(?<![A-Za-z])(?:student|classmate|teammate|tutor|instructor|teacher|lecturer|grader|advisor) +({_EN_NAME})"
    ),
]
_EN_WEAK = [  # weaker cues: a course term alone is not taken as a name here
    re.compile(
        rf"(?<![A-Za-z])(?:Hi|Hello|Hey|Dear|Thanks|Thank you|Cheers|Regards),? +({_EN_NAME})(?= *[,.!?:;]| *$)"
    ),
    re.compile(rf"(?<![A-Za-z])by +({_EN_TOK} {_EN_TOK}(?: {_EN_TOK})?)(?![A-Za-z])"),
]
_EN_VERB = re.compile(
    rf"(?<![A-Za-z])({_EN_TOK} {_EN_TOK}) (?:asked|asks|said|says|wrote|writes|replied|answered|mentioned"
    r"|noted|suggested|explained|commented|pointed|submitted|presented|emailed|posted)(?![a-z])"
)


def read_word_list(name: str) -> list[str]:
    """Non-empty, non-comment lines of resources/<name>, stripped, in file order."""
    lines = (RESOURCES / name).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


@dataclass(frozen=True)
class Lexicon:
    """The word lists the name detector uses, loaded once per process."""

    surname_rank: dict[str, int]
    """Single-character surname -> line position in zh_surnames.txt (0 = most common)."""
    compounds: frozenset[str]
    """Two-character surnames (欧阳, 司马, ...)."""
    zh_veto: re.Pattern[str]
    """Course terms and common words: a Chinese candidate overlapping a match is dropped."""
    en_terms: frozenset[str]
    """English course terms that are also surnames (Newton, Bayes, Taylor)."""
    en_stop: frozenset[str]
    """Capitalised words that end a candidate English name (All, Monday, Python)."""


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """Load the resource word lists (about 1 ms; cached)."""
    surnames = read_word_list("zh_surnames.txt")
    terms = read_word_list("course_terms.txt")
    zh_veto = [w for w in terms + read_word_list("zh_common_words.txt") if is_cjk(w[0])]
    zh_veto.sort(key=len, reverse=True)
    return Lexicon(
        surname_rank={s: i for i, s in enumerate(surnames) if len(s) == 1},
        compounds=frozenset(s for s in surnames if len(s) == 2),
        zh_veto=re.compile("|".join(map(re.escape, zh_veto))),
        en_terms=frozenset(w for w in terms if not is_cjk(w[0])),
        en_stop=frozenset(read_word_list("en_not_names.txt")),
    )


def is_cjk(ch: str) -> bool:
    """True for a CJK unified ideograph (basic block or extension A)."""
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


class _ZhDoc:
    """One document's Chinese-name context: vetoed positions and where left cues end."""

    def __init__(self, text: str, lex: Lexicon) -> None:
        self.text, self.lex = text, lex
        self.veto = bytearray(len(text))
        for m in lex.zh_veto.finditer(text):
            self.veto[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
        self.cue_ends = {m.end() for m in LEFT_CUE.finditer(text)}

    def surname_rank(self, i: int, j: int, allow_bare: bool) -> int | None:
        """Rank of text[i:j] as surname + 0-2 given characters (-1: compound surname), or None."""
        cand, lex = self.text[i:j], self.lex
        if cand[:2] in lex.compounds:
            n_sur, rank = 2, -1
        elif cand[0] in lex.surname_rank:
            n_sur, rank = 1, lex.surname_rank[cand[0]]
        else:
            return None
        given = cand[n_sur:]
        if len(given) > 2 or (not given and not allow_bare) or any(self.veto[i:j]):
            return None
        if any(not is_cjk(c) or c in _NOT_GIVEN for c in given):
            return None
        return rank

    def left_strength(self, i: int) -> int:
        """2: text start, non-CJK or a left cue before i; 1: a function character; 0: mid-word."""
        if i == 0 or not is_cjk(self.text[i - 1]) or i in self.cue_ends:
            return 2
        return 1 if self.text[i - 1] in _WEAK_LEFT else 0

    def right_ok(self, j: int) -> bool:
        """Can a name end at j (text end, non-CJK, a function character or a right cue)?"""
        t = self.text
        return j == len(t) or not is_cjk(t[j]) or t[j] in _WEAK_RIGHT or bool(RIGHT_CUE.match(t, j))

    def ending_at(self, p: int, honorific: bool, need_left: bool) -> tuple[int, int] | None:
        """Best name ending at p (a right cue starts there), or None."""
        options = []  # (left strength, length, tier, start)
        for length in range(1, 5):
            i = p - length
            if i < 0:
                break
            rank = self.surname_rank(i, p, allow_bare=honorific)
            if rank is not None:
                tier = 0 if rank < 0 else 1 if rank < _TOP_SURNAMES else 2
                options.append((self.left_strength(i), length, tier, i))
        justified = [o for o in options if o[0] > 0]
        if justified:
            return max(justified)[3], p
        # No boundary on the left ("班主任王伟老师"): only after an honorific, with a given name;
        # prefer a compound surname, then a common one, then the shorter name.
        bare_len = {i: 2 if self.text[i : i + 2] in self.lex.compounds else 1 for *_, i in options}
        loose = [(o[2], o[1], o[3]) for o in options if o[1] > bare_len[o[3]]]
        if need_left or not honorific or not loose:
            return None
        return min(loose)[2], p

    def starting_at(self, q: int) -> tuple[int, int] | None:
        """Longest name starting at q (a left cue ends there) that ends at a boundary, or None."""
        for length in (4, 3, 2):
            j = q + length
            if j <= len(self.text) and self.surname_rank(q, j, False) is not None and self.right_ok(j):
                return q, j
        return None


def _zh_cued(doc: _ZhDoc) -> set[tuple[int, int]]:
    """Names next to a right cue or after a left cue."""
    found: set[tuple[int, int]] = set()
    for m in RIGHT_CUE.finditer(doc.text):
        hit = doc.ending_at(m.start(), honorific=m.group("hon") is not None, need_left=False)
        if hit:
            found.add(hit)
    for q in doc.cue_ends:
        hit = doc.starting_at(q)
        if hit:
            found.add(hit)
    return found


def _zh_lists(doc: _ZhDoc, found: set[tuple[int, int]]) -> None:
    """Extend found names along lists: 王伟、李华和张敏同学."""
    frontier = list(found)
    while frontier:
        i, j = frontier.pop()
        nxt = doc.starting_at(j + 1) if j < len(doc.text) and doc.text[j] in _LIST_SEP else None
        prev = doc.ending_at(i - 1, False, need_left=True) if i > 1 and doc.text[i - 1] in _LIST_SEP else None
        for hit in (nxt, prev):
            if hit and hit not in found:
                found.add(hit)
                frontier.append(hit)


def _zh_names(text: str, lex: Lexicon) -> set[tuple[int, int]]:
    """Chinese name spans: cued names, list neighbours, then every repeat of a found full name."""
    doc = _ZhDoc(text, lex)
    found = _zh_cued(doc)
    _zh_lists(doc, found)
    for name in {text[i:j] for i, j in found if j - i >= 2}:
        start = text.find(name)
        while start >= 0:
            if not any(doc.veto[start : start + len(name)]):
                found.add((start, start + len(name)))
            start = text.find(name, start + 1)
    return found


def _en_span(m: re.Match[str], lex: Lexicon, weak: bool, from_right: bool) -> tuple[int, int] | None:
    """Trim a cued capitalised run to the name it holds: stop words end it, course terms veto it."""
    tokens, pos, spans = m.group(1).split(" "), m.start(1), []
    for tok in tokens:
        spans.append((pos, pos + len(tok), tok))
        pos += len(tok) + 1
    if from_right:  # "Yesterday John Smith asked": drop leading stop words
        while spans and spans[0][2] in lex.en_stop:
            spans.pop(0)
    else:  # "Hi John, ...", "Prof. Smith Monday": stop at the first stop word
        cut = next((k for k, s in enumerate(spans) if s[2] in lex.en_stop), len(spans))
        spans = spans[:cut]
    if not spans or any(s[2] in lex.en_stop for s in spans):
        return None
    words = [s[2] for s in spans]
    if weak and (all(w in lex.en_terms for w in words) or " ".join(words) in lex.en_terms):
        return None
    return spans[0][0], spans[-1][1]


def _en_names(text: str, lex: Lexicon) -> set[tuple[int, int]]:
    """English name spans found by title, introduction, role, greeting, 'by' and speech-verb cues."""
    found: set[tuple[int, int]] = set()
    runs = [(p, False, False) for p in _EN_STRONG] + [(p, True, False) for p in _EN_WEAK]
    for pattern, weak, from_right in runs + [(_EN_VERB, True, True)]:
        for m in pattern.finditer(text):
            hit = _en_span(m, lex, weak, from_right)
            if hit:
                found.add(hit)
    return found


@lru_cache(maxsize=16)
def _roster_index(names: frozenset[str]) -> tuple[frozenset[str], tuple[int, ...]]:
    """First characters of roster names and their lengths, longest first (set lookups beat a
    3,000-way regex alternation by ~10x)."""
    return frozenset(n[0] for n in names), tuple(sorted({len(n) for n in names}, reverse=True))


def _roster_hits(text: str, names: frozenset[str]) -> set[tuple[int, int]]:
    """Longest roster name at each position; a Latin name must stand as a whole word."""
    firsts, lengths = _roster_index(names)
    hits = set()
    for i, ch in enumerate(text):
        latin = ch.isascii() and ch.isalpha()
        if ch not in firsts or (latin and i and text[i - 1].isascii() and text[i - 1].isalpha()):
            continue
        for n in lengths:
            j = i + n
            if text[i:j] in names and not (latin and j < len(text) and text[j].isascii() and text[j].isalpha()):
                hits.add((i, j))
                break
    return hits


def find_name_spans(text: str, roster_names: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """(start, end) of person names in text; spans may overlap (the caller resolves overlaps).

    Roster names match anywhere except over a course term or common word (a roster entry 高斯 does
    not scrub 高斯分布).
    """
    lex = lexicon()
    found = _zh_names(text, lex) | _en_names(text, lex)
    if roster_names:
        veto = [(m.start(), m.end()) for m in lex.zh_veto.finditer(text)]
        found |= {(i, j) for i, j in _roster_hits(text, roster_names) if not any(s < j and i < e for s, e in veto)}
    return sorted(found)


def name_numbers(names: list[str]) -> list[int]:
    """Placeholder number (1-based) for each name, in order: the same name gets the same number.

    Names compare case- and space-insensitively; a one-word English name that is a word of an
    earlier full name reuses its number ("John Smith" ... "Prof. Smith" -> both <NAME_1>).
    """
    table: dict[str, int] = {}
    words: dict[str, int] = {}
    out = []
    for name in names:
        key = " ".join(name.split()).casefold()
        if key not in table:
            table[key] = words.get(key, len(set(table.values())) + 1)
            if " " in key:
                for word in key.split(" "):
                    words.setdefault(word, table[key])
        out.append(table[key])
    return out
