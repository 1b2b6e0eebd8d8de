"""card.json (what went in, what came out, with which config) and the summary table printed at the end.

Both are built from the stages' stats files (DIR/stages/<stage>.stats.json), so `stage=NAME` runs
update them too. No wall time goes in card.json (reruns are byte-identical); timings are written to
DIR/timing.json instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ta_data.config import STAGES
from ta_data.stage_io import read_stats, rejects_file

CARD_VERSION = 1
MAX_SOURCE_ROWS = 20
"""The summary lists the 20 largest sources and sums the rest (card.json lists all)."""


def collect_stats(out: str | Path) -> dict[str, dict[str, Any]]:
    return {s: st for s in STAGES if (st := read_stats(out, s)) is not None}


def _prefixed(extra: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)}


def build_card(out: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """card.json: counts per stage, per source, per language, PII, duplicates, rejects, token histogram."""
    stats = collect_stats(out)
    rejects: dict[str, int] = {}
    for st in stats.values():
        for reason, n in st["rejects_by_reason"].items():
            rejects[reason] = rejects.get(reason, 0) + n
    pii: dict[str, int] = _prefixed(stats.get("pii", {}).get("extra", {}), "pii:")
    chunk_extra = stats.get("chunk", {}).get("extra", {})
    mix = stats.get("mix", {})
    return {
        "version": CARD_VERSION,
        "stages": {s: {"in": st["in"], "out": st["out"], "rejected": sum(st["rejects_by_reason"].values())}
                   for s, st in stats.items()},
        "per_source": {s: st["out_by_source"] for s, st in stats.items()},
        "per_language": {s: st["out_by_lang"] for s, st in stats.items() if st["out_by_lang"]},
        "pii_found": pii,
        "duplicates_removed": _prefixed(stats.get("dedup", {}).get("extra", {}), "duplicates:"),
        "rejects_by_reason": dict(sorted(rejects.items())),
        "token_histogram": {k: v for k, v in _prefixed(chunk_extra, "tokens:").items() if k != "total"},
        "chunk_tokens_total": chunk_extra.get("tokens:total", 0),
        "records_by_kind": _prefixed(mix.get("extra", {}), "kind:"),
        "outputs": {k: v for k, v in mix.get("extra", {}).items() if k in ("train", "val")}
        | {"evalset": _prefixed(mix.get("extra", {}), "evalset:")},
        "config": config,
    }


def write_card(out: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    card = build_card(out, config)
    Path(out, "card.json").write_text(json.dumps(card, sort_keys=True, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return card


def write_rejects(out: str | Path) -> int:
    """DIR/rejects.jsonl: every stage's rejects, in stage order (each already scrubbed of PII)."""
    n = 0
    with Path(out, "rejects.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for stage in STAGES:
            path = rejects_file(out, stage)
            if path.is_file():
                for line in path.open(encoding="utf-8"):
                    f.write(line)
                    n += 1
    return n


def _table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [f"== {title} ==", fmt(header), *[fmt(r) for r in rows], ""]


def summary(card: dict[str, Any]) -> str:
    """The end-of-run summary: stages in/out, per source, per language, PII, duplicates, rejects."""
    lines: list[str] = []
    lines += _table("records per stage", [(s, v["in"], v["out"], v["rejected"]) for s, v in card["stages"].items()],
                    ("stage", "in", "out", "rejected"))
    stages = [s for s in ("read", "pii", "dedup", "chunk", "mix") if s in card["per_source"]]
    sources = sorted({src for s in stages for src in card["per_source"][s]})
    rows = [(src, *[card["per_source"][s].get(src, 0) for s in stages]) for src in sources]
    if len(rows) > MAX_SOURCE_ROWS:  # the largest sources; card.json has every one
        shown = sorted(rows, key=lambda r: (-sum(r[1:]), r[0]))[:MAX_SOURCE_ROWS]
        hidden = [r for r in rows if r not in shown]
        rows = sorted(shown) + [(f"({len(hidden)} more sources)", *[sum(r[k] for r in hidden) for k in range(1, len(stages) + 1)])]
    lines += _table("records per source (out of each stage)", rows, ("source", *stages))
    lang_stages = list(card["per_language"])
    langs = sorted({lang for s in lang_stages for lang in card["per_language"][s]})
    lines += _table("records per language", [(lang, *[card["per_language"][s].get(lang, 0) for s in lang_stages])
                                            for lang in langs], ("language", *lang_stages))
    lines += _table("PII found (replaced by placeholders)", sorted(card["pii_found"].items()), ("type", "count"))
    lines += _table("duplicates removed", sorted(card["duplicates_removed"].items()), ("kind", "count"))
    lines += _table("rejects by reason", sorted(card["rejects_by_reason"].items()), ("reason", "count"))
    lines += _table("outputs", [(k, v) for k, v in card["outputs"].items() if k != "evalset"]
                    + [(f"evalset {k}", v) for k, v in card["outputs"].get("evalset", {}).items()], ("file", "records"))
    return "\n".join(lines)
