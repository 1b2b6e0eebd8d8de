"""PII scrubber benchmark: ta_data.pii on the shared synthetic PII set, per-type precision / recall, docs/s.

    python bench/pii_bench.py                      # data under /tmp/pii_data, jieba comparison on
    python bench/pii_bench.py --no-jieba --data-dir /tmp/pii_data

Data: /work/shared/bench/dedup/gen_pii.py (5,000 docs, 70% zh, planted phones, emails, student IDs,
names and negatives, + 2,000 PII-free docs) and this script's extra set (1,000 docs: ID cards with
valid and invalid checksums, landlines, more student-ID phrasings, harder name contexts, course
terms next to name cues, non-PII numbers). Both are generated under --data-dir when missing
(needs jieba for the shared generator's word lists). Scoring is bench_pii.py's own loop, run on
our detectors: recall = planted spans fully covered by a detection of the same type; precision =
detections overlapping a planted span of their type; clean FP = detections per 1k PII-free docs.
Skips with a message (exit 0) when the shared bench folder or jieba is missing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ta_data.pii import Roster, Span, find_pii  # noqa: E402
from ta_data.pii_names import LEFT_CUE, RIGHT_CUE, is_cjk, lexicon  # noqa: E402

SHARED = Path("/work/shared/bench/dedup")
BENCH_TYPE = {"PHONE": "phone", "EMAIL": "email", "STUDENT_ID": "sid", "ID_CARD": "id_card", "LANDLINE": "landline"}
Detection = tuple[int, int, str]
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def bench_type(span: Span) -> str:
    """bench_pii.py's type name for one of our spans (names split by script)."""
    if span.kind == "NAME":
        return "zh_name" if is_cjk(span.text[0]) else "en_name"
    return BENCH_TYPE[span.kind]


def ours(roster: Roster | None = None) -> Callable[[str], list[Detection]]:
    """Detector in bench_pii.py's shape: text -> [(start, end, type)]."""
    return lambda text: [(s.start, s.end, bench_type(s)) for s in find_pii(text, roster)]


def id_card(rng: random.Random, valid: bool = True) -> str:
    """A resident ID number with a real birth date and a correct (or deliberately wrong) check digit."""
    body = rng.choice(["110105", "310104", "440305", "510107", "320102"])
    body += f"{rng.randint(1975, 2006)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS)) % 11]
    if not valid:
        check = rng.choice([c for c in "0123456789X" if c != check])
    return body + check


def extra_items(rng: random.Random, lang: str) -> list[tuple[str, dict | None]]:
    """One planted item as [(text, meta or None), ...] for the extra set (names from gen_pii.py's lists)."""
    import gen_pii

    zh_name, en_name = (lambda: gen_pii.zh_name(rng)), (lambda: gen_pii.en_name(rng))
    kind = rng.choice(["id", "id", "bad_id", "landline", "landline", "sid", "name", "name", "term", "number"])
    if kind in ("id", "bad_id"):
        v = id_card(rng, kind == "id")
        t = "id_card" if kind == "id" else "neg_idcard"
        fmt = rng.choice(["plain", "adjacent_cjk", "spaced"])
        if fmt == "spaced":
            v = f"{v[:6]} {v[6:14]} {v[14:]}"
        lead = {"plain": "身份证号：", "adjacent_cjk": "身份证号", "spaced": "证件号 "}[fmt] if lang == "zh" else "ID card "
        return [(lead, None), (v, {"type": t, "fmt": fmt}), ("，请核对。" if lang == "zh" else ". ", None)]
    if kind == "landline":
        fmt, v = rng.choice([
            ("dashed", f"010-{rng.randint(2, 8)}{rng.randint(0, 9999999):07d}"),
            ("paren", f"(021) {rng.randint(5000, 6999)} {rng.randint(0, 9999):04d}"),
            ("area4_ext", f"0755-{rng.randint(2000, 8999)}{rng.randint(0, 9999):04d}转{rng.randint(100, 999)}"),
            ("hotline", f"400-{rng.randint(100, 999)}-{rng.randint(0, 9999):04d}"),
            ("bare_keyword", f"0{rng.choice(['10', '21', '571'])}{rng.randint(2, 8)}{rng.randint(0, 9999999):07d}"),
        ])
        lead = "办公室电话" if lang == "zh" else "Office phone: "
        return [(lead, None), (v, {"type": "landline", "fmt": fmt}), ("。" if lang == "zh" else ". ", None)]
    if kind == "sid":
        v = f"{rng.choice([2019, 2020, 2021, 2022, 2023])}{rng.randint(0, 999999):06d}"
        fmt, lead = rng.choice([("shi", "学号是"), ("wei", "学号为"), ("list", "学号："), ("prefixed", "学号 PB")])
        if lang == "en":
            fmt, lead = rng.choice([("en_number", "student number: "), ("en_is", "My student ID is ")])
        if fmt == "prefixed":
            return [("学号 ", None), ("PB" + v, {"type": "sid", "fmt": fmt}), (" 已登记。", None)]
        tail = [("、", None), (str(int(v) + 1), {"type": "sid", "fmt": fmt})] if fmt == "list" else []
        return [(lead, None), (v, {"type": "sid", "fmt": fmt}), *tail, ("。" if lang == "zh" else ". ", None)]
    if kind == "name" and lang == "zh":
        a, b = zh_name(), zh_name()
        fmt = rng.choice(["mid_sentence", "thanks", "and_list", "surname_only"])
        if fmt == "mid_sentence":
            return [("昨天", None), (a, {"type": "zh_name", "fmt": fmt}), ("同学交了报告。", None)]
        if fmt == "thanks":
            return [("感谢", None), (a, {"type": "zh_name", "fmt": fmt}), ("的帮助。", None)]
        if fmt == "and_list":
            return [("。", None), (a, {"type": "zh_name", "fmt": fmt}), ("和", None),
                    (b, {"type": "zh_name", "fmt": fmt}), ("同学一组。", None)]
        surname = rng.choice(gen_pii.SURNAMES)
        return [("有问题找", None), (surname, {"type": "zh_name", "fmt": fmt}), ("老师。", None)]
    if kind == "name":
        v = en_name()
        fmt, lead, tail = rng.choice([("dr", "Dr. ", " grades the lab. "), ("intro", "My name is ", ". "),
                                      ("role", "The student ", " missed class. "), ("dear", "Dear ", ", thanks. ")])
        return [(lead, None), (v, {"type": "en_name", "fmt": fmt}), (tail, None)]
    if kind == "term":
        term = rng.choice(["牛顿", "高斯", "欧拉", "泰勒", "黎曼", "柯西", "傅里叶", "拉格朗日"])
        if lang == "en":
            return [("As ", None), ("Newton", {"type": "neg_nameword", "fmt": "en_cue"}), (" said, it works. ", None)]
        cue = rng.choice(["认为", "指出", "说：", "老师"])
        return [("。", None), (term, {"type": "neg_nameword", "fmt": "zh_cue"}), (cue + "这很重要。", None)]
    v, fmt = rng.choice([("2024", "year"), (f"20{rng.randint(10, 25)}01011230", "timestamp12"),
                         ("6.02214076e23", "avogadro"), ("299792458", "light_speed"), ("2147483648", "int_max")])
    return [("数值" if lang == "zh" else "Value ", None), (v, {"type": "neg_number", "fmt": fmt}), ("。", None)]


def make_extra(n: int, seed: int) -> list[dict]:
    """The extra set: n docs in gen_pii.py's row format, 70% zh."""
    sys.path.insert(0, str(SHARED))
    from common import Vocab

    rng = random.Random(seed)
    vocab = Vocab(rng)
    rows = []
    for i in range(n):
        lang = "zh" if rng.random() < 0.7 else "en"
        ctx = vocab.zh_sentence if lang == "zh" else (lambda: vocab.en_sentence() + " ")
        parts = [(ctx(), None)]
        for _ in range(rng.randint(1, 3)):
            parts += extra_items(rng, lang)
            parts.append((ctx(), None))
        text, spans = "", []
        for s, meta in parts:
            if meta:
                spans.append({**meta, "start": len(text), "end": len(text) + len(s), "value": s})
            text += s
        rows.append({"id": i, "lang": lang, "text": text, "spans": spans})
    return rows


def jieba_cued(base: Callable[[str], list[Detection]], keep_rules: bool) -> Callable[[str], list[Detection]]:
    """Our detector with Chinese names from jieba's `nr` tag next to a cue (optionally plus our rules)."""
    import jieba
    import jieba.posseg as pseg

    jieba.setLogLevel(60)
    lex = lexicon()

    def detect(text: str) -> list[Detection]:
        veto = [(m.start(), m.end()) for m in lex.zh_veto.finditer(text)]
        left = {m.end() for m in LEFT_CUE.finditer(text)}
        out = [d for d in base(text) if keep_rules or d[2] != "zh_name"]
        pos = 0
        for word, flag in pseg.cut(text):
            s, e, pos = pos, pos + len(word), pos + len(word)
            cued = s in left or RIGHT_CUE.match(text, e) is not None
            if flag == "nr" and cued and not any(a < e and s < b for a, b in veto):
                out.append((s, e, "zh_name"))
        return out

    return detect


def score(detectors: dict[str, Callable[[str], list[Detection]]], data: Path, clean: Path, out: Path,
          baselines: tuple[str, ...] = ()) -> dict:
    """Run bench_pii.py's scoring loop on our detectors (plus its own named baselines); returns its results."""
    sys.path.insert(0, str(SHARED))
    import bench_pii

    if not hasattr(bench_pii, "BASELINES"):
        bench_pii.BASELINES = dict(bench_pii.DETECTORS)

    bench_pii.DETECTORS = {**detectors, **{k: bench_pii.BASELINES[k] for k in baselines}}
    argv = sys.argv
    sys.argv = ["bench_pii.py", "--data", str(data), "--clean", str(clean), "--out", str(out)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            bench_pii.main()
    finally:
        sys.argv = argv
    return json.loads(out.read_text(encoding="utf-8"))


def docs_per_second(detect: Callable[[str], list[Detection]], texts: list[str]) -> float:
    """Documents per wall-clock second, one process, after one warm-up document."""
    detect(texts[0])
    t0 = time.perf_counter()
    for t in texts:
        detect(t)
    return len(texts) / (time.perf_counter() - t0)


def print_table(name: str, res: dict, speed: float | None) -> None:
    """One markdown table per detector: per-type P / R / clean FP, negatives hit, docs/s."""
    print(f"\n### {name}" + (f" ({speed:,.0f} docs/s)" if speed else ""))
    print("| type | planted | recall (full span) | precision (overlap) | FP per 1k clean docs | recall by format |")
    print("|---|---|---|---|---|---|")
    for typ, r in res["types"].items():
        fmts = ", ".join(f"{k} {v:.3f}" for k, v in r["recall_full_by_fmt"].items())
        print(f"| {typ} | {r['planted']} | {r['recall_full']} | {r['precision_overlap']} "
              f"| {r['fp_on_clean_per_1k_docs']} | {fmts} |")
    neg = "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in d.items()) for t, d in res["negatives_hit_rate"].items())
    print(f"negatives redacted (should be 0): {neg}")


def real_text_check(corpus: Path) -> None:
    """Detections on real textbook chapters (d2l-zh, OpenStax Physics): no planted PII, so every hit is
    either a real person's name in the text or a false positive; print them all for reading."""
    files = sorted(corpus.rglob("*.md"))
    if not files:
        return
    chars, hits = 0, []
    for f in files:
        text = f.read_text(encoding="utf-8")
        chars += len(text)
        hits += [(f.parent.name, s, text[max(0, s.start - 12) : s.end + 12]) for s in find_pii(text)]
    print(f"\n## real text: {len(files)} textbook files under {corpus}, {chars:,} chars, {len(hits)} detections")
    for folder, span, ctx in hits:
        print(f"- {folder}: {span.kind} {span.text!r} in {ctx!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/pii_data"))
    ap.add_argument("--no-jieba", action="store_true", help="skip the jieba comparison rows")
    ap.add_argument("--baselines", nargs="*", default=[], metavar="NAME",
                    help="also score bench_pii.py's own detectors, e.g. lookaround_ctx jieba_nr surname_ctx")
    args = ap.parse_args()
    if not (SHARED / "gen_pii.py").exists():
        print(f"skip: {SHARED} not found (the shared PII benchmark is not on this machine)")
        return
    try:
        import jieba  # noqa: F401  (the shared generator reads jieba's dictionary)
    except ImportError:
        print("skip: jieba is not installed (pip install jieba==0.42.1); the generator needs its word list")
        return
    d = args.data_dir
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "pii.jsonl").exists():
        sys.path.insert(0, str(SHARED))
        import gen_pii

        sys.argv, argv = ["gen_pii.py", "--out", str(d)], sys.argv
        with contextlib.redirect_stdout(io.StringIO()):
            gen_pii.main()
        sys.argv = argv
    if not (d / "pii_extra.jsonl").exists():
        rows = make_extra(1000, seed=11)
        (d / "pii_extra.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")

    main_rows = [json.loads(x) for x in (d / "pii.jsonl").read_text("utf-8").splitlines()]
    clean_texts = [json.loads(x)["text"] for x in (d / "pii_clean.jsonl").read_text("utf-8").splitlines()]
    planted = [s for r in main_rows for s in r["spans"]]
    roster = Roster(frozenset(s["value"] for s in planted if s["type"] in ("zh_name", "en_name")),
                    frozenset(s["value"] for s in planted if s["type"] == "sid"))
    detectors = {"ta_pii": ours()}
    if not args.no_jieba:
        detectors["jieba nr + cue (names from jieba)"] = jieba_cued(ours(), keep_rules=False)
        detectors["ta_pii + jieba nr + cue (union)"] = jieba_cued(ours(), keep_rules=True)
    with_roster = {**detectors, "ta_pii + full roster": ours(roster)}
    texts = [r["text"] for r in main_rows] + clean_texts
    print(f"data: {d} ({len(main_rows)} docs + {len(clean_texts)} clean; extra set in pii_extra.jsonl)")
    print("docs/s: find_pii over the 5,000 + 2,000 docs, one process, after a warm-up document")
    for label, dets, data in (("shared set", with_roster, d / "pii.jsonl"), ("extra set", detectors, d / "pii_extra.jsonl")):
        results = score(dets, data, d / "pii_clean.jsonl", d / f"scores_{data.stem}.json", tuple(args.baselines))
        print(f"\n## {label}: {data}")
        for name, res in results.items():
            speed = docs_per_second(dets[name], texts) if label == "shared set" and name in dets else None
            print_table(name, res, speed)
    real_text_check(SHARED.parent.parent / "assets" / "corpus")


if __name__ == "__main__":
    main()
