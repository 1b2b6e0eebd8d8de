"""Files and counters shared by the pipeline stages: DIR/stages/<stage>.jsonl, .rejects.jsonl, .stats.json.

Intermediate records are JSON objects with sorted keys, one per line, in input order:

    doc: {"id", "type": "doc", "text", "source", "chapter", "start", "end", "kind", "meta", "lang"?}
    qa:  {"id", "type": "qa", "question", "answer", "source", "line", "meta", "off_course", "lang"?}

``id`` is the record's position in the read stage's output and never changes afterwards.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ta_data.records import Document, QAPair


def dumps(obj: Any) -> str:
    """The one JSON form every output line uses: sorted keys, UTF-8 text, no spaces to vary."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def stages_dir(out: str | Path) -> Path:
    return Path(out) / "stages"


def stage_file(out: str | Path, stage: str) -> Path:
    return stages_dir(out) / f"{stage}.jsonl"


def rejects_file(out: str | Path, stage: str) -> Path:
    return stages_dir(out) / f"{stage}.rejects.jsonl"


def stats_file(out: str | Path, stage: str) -> Path:
    return stages_dir(out) / f"{stage}.stats.json"


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Records of an intermediate file; a missing file names the stage that writes it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the stage that writes it first (or the whole pipeline; "
            "stages/{read,clean,quality}.jsonl are kept only with keep_raw_stages=true)"
        )
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc


class AtomicWriter:
    """Write lines to PATH.tmp and rename over PATH on close: a crashed stage leaves no half file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.f = self.tmp.open("w", encoding="utf-8", newline="\n")
        self.lines = 0

    def write(self, obj: Any) -> None:
        self.f.write(obj if isinstance(obj, str) else dumps(obj))
        self.f.write("\n")
        self.lines += 1

    def close(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.f.close()
            self.tmp.unlink(missing_ok=True)


def reason_key(reason: str) -> str:
    """Group key of a reject reason: "too short: 3 units < 5" -> "too short"."""
    return reason.split(":", 1)[0].strip()[:60]


@dataclass
class StageStats:
    """Counts of one stage; merged over workers, written to stages/<stage>.stats.json."""

    stage: str
    n_in: int = 0
    n_out: int = 0
    in_by_source: Counter = field(default_factory=Counter)
    out_by_source: Counter = field(default_factory=Counter)
    out_by_lang: Counter = field(default_factory=Counter)
    rejects_by_reason: Counter = field(default_factory=Counter)
    extra: Counter = field(default_factory=Counter)
    """Stage-specific counts: PII by type, exact/near duplicates, records by kind, token bins."""

    def count_in(self, source: str) -> None:
        self.n_in += 1
        self.in_by_source[source] += 1

    def count_out(self, source: str, lang: str | None = None) -> None:
        self.n_out += 1
        self.out_by_source[source] += 1
        if lang:
            self.out_by_lang[lang] += 1

    def to_json(self) -> dict[str, Any]:
        def plain(c: Counter) -> dict[str, int]:
            return {str(k): int(v) for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))}

        return {
            "stage": self.stage,
            "in": self.n_in,
            "out": self.n_out,
            "in_by_source": plain(self.in_by_source),
            "out_by_source": plain(self.out_by_source),
            "out_by_lang": plain(self.out_by_lang),
            "rejects_by_reason": plain(self.rejects_by_reason),
            "extra": plain(self.extra),
        }

    def write(self, out: str | Path) -> None:
        path = stats_file(out, self.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(self.to_json()) + "\n", encoding="utf-8")


def read_stats(out: str | Path, stage: str) -> dict[str, Any] | None:
    path = stats_file(out, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def doc_record(doc: Document, rid: int) -> dict[str, Any]:
    return {
        "id": rid, "type": "doc", "text": doc.text, "source": doc.source, "chapter": doc.chapter,
        "start": doc.start, "end": doc.end, "kind": doc.kind, "meta": doc.meta,
    }


def qa_record(pair: QAPair, rid: int, off_course: bool) -> dict[str, Any]:
    return {
        "id": rid, "type": "qa", "question": pair.question, "answer": pair.answer, "source": pair.source,
        "line": pair.line, "meta": pair.meta, "off_course": off_course,
    }


def to_document(rec: dict[str, Any]) -> Document:
    meta = dict(rec.get("meta") or {})
    if rec.get("lang"):
        meta["lang"] = rec["lang"]
    return Document(rec["text"], rec["source"], rec["chapter"], rec["start"], rec["end"], rec["kind"], meta)


def to_qapair(rec: dict[str, Any]) -> QAPair:
    meta = dict(rec.get("meta") or {})
    if rec.get("lang"):
        meta["lang"] = rec["lang"]
    return QAPair(rec["question"], rec["answer"], rec["source"], rec["line"], meta)


def record_text(rec: dict[str, Any]) -> str:
    """The text a stage judges: a document's text, or a QA pair's question and answer."""
    return rec["text"] if rec["type"] == "doc" else f"{rec['question']}\n{rec['answer']}"
