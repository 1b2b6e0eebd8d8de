"""Stages 1-4 of the pipeline, one record at a time: read, clean, quality, pii.

Clean, quality and pii are pure functions of one record (`clean_one`, `quality_one`, `pii_one`), so
they stream (memory flat in the input size) and run in a `multiprocessing` pool with `num_proc`
workers; `Pool.imap` keeps the input order, so the output does not depend on `num_proc`.
Rejected records are scrubbed of PII before they are written: rejects.jsonl is an output too.
"""
from __future__ import annotations

import fnmatch
import json
import multiprocessing as mp
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ta_data.clean import CleanConfig, clean_document, default_boilerplate_patterns, default_confidential_markers
from ta_data.clean import load_sensitive_words
from ta_data.config import PipelineConfig
from ta_data.pii import Roster, load_roster, scrub
from ta_data.quality import filter_document
from ta_data.readers import read_course_file, read_qa
from ta_data.records import Reject
from ta_data.stage_io import (
    AtomicWriter, StageStats, doc_record, dumps, iter_jsonl, qa_record, reason_key, record_text, rejects_file,
    stage_file,
)

Result = tuple[dict | None, str | None, dict[str, Any]]
"""(kept record or None, reject line or None, counts for the stage's stats)."""

_WORKER: dict[str, Any] = {}  # per process: the config and the objects built from it once


def _setup(cfg: PipelineConfig) -> None:
    """Build what the per-record functions need (clean config, roster) once per process."""
    c = cfg.clean
    words = tuple(load_sensitive_words(c.sensitive_words)) if c.sensitive_words else ()
    _WORKER["clean"] = CleanConfig(
        fix_mojibake=c.fix_mojibake, normalize_width=c.normalize_width, keep_cjk_punct=c.keep_cjk_punct,
        to_simplified=c.to_simplified, normalize_whitespace=c.normalize_whitespace,
        boilerplate_patterns=tuple(c.boilerplate_patterns) if c.boilerplate_patterns is not None
        else default_boilerplate_patterns(),
        confidential_markers=tuple(c.confidential_markers) if c.confidential_markers is not None
        else default_confidential_markers(),
        sensitive_words=words,
    )
    _WORKER["roster"] = load_roster(cfg.pii.roster) if cfg.pii.roster else None
    _WORKER["quality"] = cfg.quality


def scrub_value(value: Any, roster: Roster | None) -> Any:
    """Every string inside value (dicts, lists) with its PII replaced by placeholders."""
    if isinstance(value, str):
        return scrub(value, roster).text
    if isinstance(value, dict):
        return {k: scrub_value(v, roster) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v, roster) for v in value]
    return value


def scrubbed_reject(reject: Reject, roster: Roster | None) -> str:
    return Reject(reject.file, reject.line, scrub_value(reject.reason, roster), scrub_value(reject.record, roster)).to_json()


def _reject(rec: dict, stage: str, reason: str) -> Result:
    line = rec.get("line") if rec["type"] == "qa" else (rec.get("meta") or {}).get("line")
    reject = Reject(rec["source"], line, f"{stage}: {reason}", rec)
    return None, scrubbed_reject(reject, _WORKER["roster"]), {"reason": reason}


def clean_one(rec: dict) -> Result:
    """Stage 2 on one record: a document's text, or both sides of a QA pair."""
    fields = ("text",) if rec["type"] == "doc" else ("question", "answer")
    out = dict(rec)
    for name in fields:
        result = clean_document(rec[name], _WORKER["clean"])
        if result.rejected_reason is not None:
            return _reject(rec, "clean", result.rejected_reason)
        out[name] = result.text
    return out, None, {}


def quality_one(rec: dict) -> Result:
    """Stage 3 on one record: too short, garbled, language; the language is stored as `lang`."""
    q = _WORKER["quality"]
    verdict = filter_document(record_text(rec), min_units=q.min_units, allowed_langs=tuple(q.langs))
    if not verdict.keep:
        return _reject(rec, "quality", verdict.reason or "rejected")
    return {**rec, "lang": verdict.lang}, None, {"lang": verdict.lang}


_SEP = "\n\u2029\n"  # joins a QA pair so both sides share one name numbering; no PII pattern spans it


def pii_one(rec: dict) -> Result:
    """Stage 4 on one record: text (and chapter, meta) with PII replaced; counts per type."""
    roster = _WORKER["roster"]
    counts: dict[str, int] = {}
    out = dict(rec)
    if rec["type"] == "doc":
        result = scrub(rec["text"], roster)
        out["text"], counts = result.text, dict(result.counts)
        out["chapter"] = scrub_value(rec["chapter"], roster)
    else:
        joined = rec["question"] + _SEP + rec["answer"]
        result = scrub(joined, roster)
        parts = result.text.split(_SEP)
        if len(parts) == 2:
            out["question"], out["answer"] = parts
            counts = dict(result.counts)
        else:  # the separator was inside a question: scrub the two sides apart
            q, a = scrub(rec["question"], roster), scrub(rec["answer"], roster)
            out["question"], out["answer"] = q.text, a.text
            counts = {k: q.counts[k] + a.counts[k] for k in q.counts}
    out["meta"] = scrub_value(rec.get("meta") or {}, roster)
    return out, None, {"pii": {k: v for k, v in counts.items() if v}}


PER_RECORD: dict[str, Callable[[dict], Result]] = {"clean": clean_one, "quality": quality_one, "pii": pii_one}
PREVIOUS = {"clean": "read", "quality": "clean", "pii": "quality"}


def _matches(rel: str, globs: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in globs)


def _input_files(root: Path, skip: list[str]) -> list[tuple[Path, str]]:
    if root.is_file():
        return [(root, root.name)]
    if not root.is_dir():
        raise FileNotFoundError(f"input={root}: no such file or folder")
    files = [(p, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file()]
    return sorted(((p, rel) for p, rel in files if not _matches(rel, skip)), key=lambda x: x[1])


def iter_read(cfg: PipelineConfig) -> Iterator[dict | Reject]:
    """Stage 1: every input file as doc or qa records, numbered in (sorted path, position) order,
    and the Rejects of the readers as they come.

    ``source`` (and a reject's ``file``) is the path relative to the input folder, so outputs do not
    depend on where the course lies or on the working directory.
    """
    rid = 0
    roster = load_roster(cfg.pii.roster) if cfg.pii.roster else None
    for path, found in _input_files(Path(cfg.input), cfg.read.skip_globs):
        off_course = _matches(found, cfg.read.off_course_globs)
        rel = private_source(found, roster)
        rejects: list[Reject] = []
        if off_course or _matches(found, cfg.read.qa_globs):
            records = (qa_record(pair, 0, off_course) for pair in read_qa(path, rejects))
        else:
            records = (doc_record(doc, 0) for doc in read_course_file(path, rejects))
        for rec in records:
            yield {**rec, "id": rid, "source": rel}
            rid += 1
            yield from (Reject(rel, r.line, r.reason, r.record) for r in rejects)
            rejects.clear()
        yield from (Reject(rel, r.line, r.reason, r.record) for r in rejects)


def private_source(rel: str, roster: Roster | None = None) -> str:
    """`rel` with PII in its file and folder names replaced, so that no output (records, rejects,
    card.json) carries a student's name, phone or email through a path ("hw/13812345678_report.md"
    -> "hw/<PHONE>_report-1c2d3e.md"). A changed path gets a short hash of the original so two
    scrubbed files never share a source name (chunks group by source)."""
    import hashlib

    parts = rel.split("/")
    stem, dot, ext = parts[-1].rpartition(".") if "." in parts[-1] else (parts[-1], "", "")
    clean = [scrub(p, roster).text for p in parts[:-1]] + [scrub(stem, roster).text]
    if clean == parts[:-1] + [stem]:
        return rel
    tag = hashlib.blake2b(rel.encode("utf-8"), digest_size=3).hexdigest()
    return "/".join(clean[:-1] + [f"{clean[-1]}-{tag}{dot}{ext}"])


def progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:<9}", unit="rec", disable=not enabled, leave=True, mininterval=0.5)


def run_read(cfg: PipelineConfig) -> StageStats:
    _setup(cfg)
    stats = StageStats("read")
    with AtomicWriter(stage_file(cfg.output, "read")) as out, AtomicWriter(rejects_file(cfg.output, "read")) as rej:
        bar = progress_bar(None, "read", cfg.progress)
        for item in iter_read(cfg):
            if isinstance(item, Reject):
                stats.rejects_by_reason[f"read: {reason_key(item.reason)}"] += 1
                rej.write(scrubbed_reject(item, _WORKER["roster"]))
                continue
            stats.count_in(item["source"])
            stats.count_out(item["source"])
            stats.extra[f"type:{item['type']}" + (":off_course" if item.get("off_course") else "")] += 1
            out.write(item)
            bar.update()
        bar.close()
    return stats


def _worker_init(cfg: PipelineConfig) -> None:
    _setup(cfg)


def _apply(args: tuple[str, dict]) -> tuple[str, dict | None, str | None, dict[str, Any]]:
    stage, rec = args
    return (rec["source"], *PER_RECORD[stage](rec))


def run_per_record(cfg: PipelineConfig, stage: str) -> StageStats:
    """Run clean, quality or pii over the previous stage's file, in order, with num_proc processes."""
    _setup(cfg)
    stats = StageStats(stage)
    src = stage_file(cfg.output, PREVIOUS[stage])
    records = ((stage, rec) for rec in iter_jsonl(src))
    pool = mp.get_context("spawn").Pool(cfg.num_proc, _worker_init, (cfg,)) if cfg.num_proc > 1 else None
    results = pool.imap(_apply, records, chunksize=64) if pool else map(_apply, records)
    try:
        with AtomicWriter(stage_file(cfg.output, stage)) as out, AtomicWriter(rejects_file(cfg.output, stage)) as rej:
            bar = progress_bar(None, stage, cfg.progress)
            for source, kept, reject, info in results:
                stats.count_in(source)
                if kept is None:
                    stats.rejects_by_reason[f"{stage}: {reason_key(info['reason'])}"] += 1
                    rej.write(reject)  # type: ignore[arg-type]
                else:
                    stats.count_out(kept["source"], kept.get("lang"))
                    for kind, n in info.get("pii", {}).items():
                        stats.extra[f"pii:{kind}"] += n
                    out.write(kept)
                bar.update()
            bar.close()
    finally:
        if pool:
            pool.close()
            pool.join()
    return stats


def raw_stage_files(out: str | Path) -> list[Path]:
    """The intermediate files that still hold unscrubbed text (deleted after a full run)."""
    return [stage_file(out, s) for s in ("read", "clean", "quality")]


class RecordStage:
    """One per-record stage (clean, quality, pii) as a picklable row function for other engines.

    A row is ``{"text": <one line of the previous stage's jsonl>}`` (what ``datasets.load_dataset("text")``
    yields); the result is ``{"out": <line or "">, "reject": <line or "">}``. Each worker process builds
    the stage's objects once, on its first row. For Hugging Face `datasets` and Ray Data alike::

        ds = load_dataset("text", data_files=str(DIR / "stages/quality.jsonl"), split="train")
        ds = ds.map(RecordStage("pii", cfg), num_proc=8, remove_columns=["text"])      # datasets
        ds = ray.data.read_text(path).map(RecordStage("pii", cfg))                     # Ray Data
    """

    def __init__(self, stage: str, cfg: PipelineConfig) -> None:
        if stage not in PER_RECORD:
            raise ValueError(f"RecordStage: {stage!r} is not a per-record stage ({', '.join(PER_RECORD)})")
        self.stage, self.cfg, self._ready = stage, cfg, False

    def __call__(self, row: dict[str, str]) -> dict[str, str]:
        if not self._ready:
            _setup(self.cfg)
            self._ready = True
        kept, reject, _ = PER_RECORD[self.stage](json.loads(row["text"]))
        return {"out": dumps(kept) if kept is not None else "", "reject": reject or ""}
