"""Stage 9 ("Mix and split"): course records + replayed open data -> sft.jsonl, val.jsonl, evalset.jsonl.

Every decision is a function of a record's content hash (blake2b of its canonical JSON, salted with
``mix.seed`` and the decision's name), never of a random state or of the input order:

- ratios: a record of kind K stays when its "ratio" hash, as a fraction of 2**64, is below ratios[K];
- caps: of the records of kind or source K, the ``caps[K]`` with the smallest "cap" hashes stay;
- replay: of each open dataset, the ``cap`` or ``round(ratio x course records)`` smallest hashes;
- evalset: per evalset kind, the eligible course records with the smallest "eval" hashes are held
  out (never trained on): ``evalset_per_kind``, at most ``evalset_fraction`` of the eligible ones;
- split: the rest go to val.jsonl when their "split" hash is below ``val_fraction``, else sft.jsonl.

So a record lands on the same side whatever else is in the corpus. Two passes over each input:
the first keeps only bounded heaps of hashes, the second writes.
"""
from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ta_data.config import MixConfig
from ta_data.quality import _CJK_CLASS, EN_MAX_CJK_SHARE, ZH_MIN_CJK_SHARE
from ta_data.stage_io import dumps

EVAL_KINDS = ("factual", "refusal", "format", "citation")
"""evalset.jsonl kinds: answer from the course, refuse, follow a format, cite a timestamp."""
_FORMAT_KINDS = ("extract", "summary", "quiz")


def record_hash(record: dict | str, salt: str, seed: int = 0) -> int:
    """64-bit hash of the record's canonical JSON (or of that JSON, when given as a str), salted per
    decision (ratio, cap, eval, split): serialize once, hash for every decision."""
    canonical = record if isinstance(record, str) else dumps(record)
    h = hashlib.blake2b(f"{seed}\x00{salt}\x00".encode(), digest_size=8)
    h.update(canonical.encode("utf-8"))
    return int.from_bytes(h.digest(), "big")


def below(h: int, fraction: float) -> bool:
    """True for a `fraction` share of uniformly distributed 64-bit hashes."""
    return h < fraction * 2**64


def to_messages(record: dict) -> list[dict[str, str]]:
    """Alpaca ({instruction, input, output, system?}) or ShareGPT (role/content or from/value) -> messages."""
    if "conversations" in record:
        roles = {"human": "user", "gpt": "assistant"}
        return [
            {"role": roles.get(t.get("role") or t.get("from"), t.get("role") or t.get("from")),
             "content": t.get("content", t.get("value", ""))}
            for t in record["conversations"]
        ]
    prompt = record["instruction"].strip()
    if (record.get("input") or "").strip():
        prompt = f"{prompt}\n\n{record['input'].strip()}"
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    if (record.get("system") or "").strip():
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


def in_format(record: dict, fmt: str) -> dict:
    """The record as Alpaca or ShareGPT; multi-turn conversations stay ShareGPT (Alpaca has one turn)."""
    meta = record.get("meta") or {}
    if fmt == "alpaca":
        if "instruction" in record:
            return record
        msgs = to_messages(record)
        system = [m["content"] for m in msgs if m["role"] == "system"]
        turns = [m for m in msgs if m["role"] != "system"]
        if len(turns) != 2 or len(system) > 1:
            return {"conversations": msgs, "meta": meta}
        out = {"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"], "meta": meta}
        return {**out, "system": system[0]} if system else out
    msgs = to_messages(record)
    system = [m["content"] for m in msgs if m["role"] == "system"]
    out = {"conversations": [m for m in msgs if m["role"] != "system"], "meta": meta}
    return {**out, "system": system[0]} if system else out


def eval_kind(record: dict) -> str | None:
    """Which evalset kind a course record can serve as (None: train only, e.g. replayed open data)."""
    meta = record.get("meta") or {}
    kind = meta.get("kind")
    if kind == "open":
        return None
    if kind == "refusal":
        return "refusal"
    if meta.get("timestamp"):
        return "citation"
    if kind == "answer":
        return "factual"
    return "format" if kind in _FORMAT_KINDS else None


def eval_item(record: dict, kind: str, seed: int, system_prompt: str | None) -> dict[str, Any]:
    """One evalset.jsonl item: the question (without its context) and the reference answer.

    ``context`` is the course text the answer comes from (Alpaca ``input``), to prepend for an
    open-book evaluation; ``citations`` lists the timestamps the reference cites.
    """
    meta = record.get("meta") or {}
    if "instruction" in record:
        question, context = record["instruction"], (record.get("input") or "").strip() or None
        reference = record["output"]
    else:
        msgs = [m for m in to_messages(record) if m["role"] != "system"]
        question, reference, context = msgs[-2]["content"], msgs[-1]["content"], meta.get("context")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": question})
    item: dict[str, Any] = {
        "id": f"{kind}-{record_hash(record, 'id', seed):016x}", "kind": kind, "messages": messages,
        "reference": reference, "source": meta.get("source"),
    }
    if context:
        item["context"] = context
    if meta.get("timestamp"):
        item["citations"] = [meta["timestamp"]]
    return item


def _smallest(keys: Iterable[tuple[int, int]], n: int) -> set[int]:
    """Indices of the n smallest (hash, index) pairs, holding only n of them."""
    return {i for _, i in heapq.nsmallest(n, keys)} if n > 0 else set()


def select_course(records: Callable[[], Iterator[dict]], cfg: MixConfig) -> tuple[set[int], dict[int, str], dict[str, int]]:
    """(kept indices, held-out index -> evalset kind, drop counts) over a re-iterable course stream."""
    drops = {"ratio": 0, "cap": 0}
    passed: list[bool] = []  # one flag per record (1 byte each): passed the ratio test
    heaps: dict[str, list[tuple[int, int]]] = {k: [] for k in cfg.caps}
    for i, rec in enumerate(records()):
        meta = rec.get("meta") or {}
        ratio = cfg.ratios.get(str(meta.get("kind")))
        canonical = dumps(rec) if ratio is not None or cfg.caps else ""
        ok = ratio is None or below(record_hash(canonical, "ratio", cfg.seed), ratio)
        passed.append(ok)
        drops["ratio"] += not ok
        capped = {str(meta.get("kind")), str(meta.get("source"))} & set(cfg.caps)
        if ok and capped:
            h = record_hash(canonical, "cap", cfg.seed)
            for key in capped:
                entry = (-h, -i)  # a max-heap of the cap smallest
                if len(heaps[key]) < cfg.caps[key]:
                    heapq.heappush(heaps[key], entry)
                elif entry > heaps[key][0]:
                    heapq.heapreplace(heaps[key], entry)
    allowed = {key: {-i for _, i in heap} for key, heap in heaps.items()}
    kept: set[int] = set()
    eval_heaps: dict[str, list[tuple[int, int]]] = {k: [] for k in EVAL_KINDS}
    eligible = dict.fromkeys(EVAL_KINDS, 0)
    for i, rec in enumerate(records()):
        if not passed[i]:
            continue
        meta = rec.get("meta") or {}
        keys = {str(meta.get("kind")), str(meta.get("source"))} & set(cfg.caps)
        if any(i not in allowed[k] for k in keys):
            drops["cap"] += 1
            continue
        kept.add(i)
        kind = eval_kind(rec)
        if kind is not None:
            eligible[kind] += 1
            eval_heaps[kind].append((record_hash(rec, "eval", cfg.seed), i))
            if len(eval_heaps[kind]) > 4 * cfg.evalset_per_kind + 64:  # keep the heaps bounded
                eval_heaps[kind] = heapq.nsmallest(cfg.evalset_per_kind, eval_heaps[kind])
    quota = {k: min(cfg.evalset_per_kind, int(cfg.evalset_fraction * eligible[k])) for k in EVAL_KINDS}
    held = {i: kind for kind, heap in eval_heaps.items() for i in _smallest(heap, quota[kind])}
    return kept, held, drops


def replay_indices(records: Callable[[], Iterator[dict]], n: int | None, seed: int) -> set[int] | None:
    """Indices of the n records with the smallest hashes (None: keep all)."""
    if n is None:
        return None
    return _smallest(((record_hash(r, "replay", seed), i) for i, r in enumerate(records())), n)


def replay_target(ratio: float | None, cap: int | None, n_course: int) -> int | None:
    """How many records of a replay source to keep: round(ratio x course records), at most cap."""
    n = None if ratio is None else round(ratio * n_course)
    if cap is not None:
        n = cap if n is None else min(n, cap)
    return n


_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
_LATIN_RE = re.compile(r"[A-Za-z]")


def record_lang(record: dict) -> str:
    """zh | en | mixed | unknown of a record's question and answer (its context is not read), by the
    CJK share of CJK + Latin letters with ta_data.quality's thresholds; regex counts, no per-character loop."""
    text = " ".join(m["content"] for m in to_messages({**record, "input": ""}) if m["role"] != "system")
    cjk, latin = len(_CJK_RE.findall(text)), len(_LATIN_RE.findall(text))
    if cjk + latin == 0:
        return "unknown"
    share = cjk / (cjk + latin)
    return "zh" if share >= ZH_MIN_CJK_SHARE else "en" if share <= EN_MAX_CJK_SHARE else "mixed"
