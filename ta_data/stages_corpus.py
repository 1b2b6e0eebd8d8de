"""Stages 5-8 of the pipeline, over the whole corpus: dedup, chunk, synth, refusals.

Dedup holds only signatures in memory (~152 bytes per record: a 16-byte exact key and the LSH band
keys) plus the texts of LSH candidates; it reads its input file three times (sketch, confirm, write).
Chunk and synth stream chunk by chunk. Refusals needs all chunks at once (a question about chunk A is
asked with chunk B as context), which is the one stage whose memory grows with the corpus.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from ta_data.chunk import Chunk, ChunkConfig, chunk_documents
from ta_data.config import PipelineConfig
from ta_data.dedup import SketchParams, candidate_pairs, cluster, confirm_pairs, exact_representatives, merge_sketches
from ta_data.dedup import sketch
from ta_data.records import Reject
from ta_data.stage_io import (
    AtomicWriter, StageStats, iter_jsonl, reason_key, record_text, rejects_file, stage_file, to_document, to_qapair,
)
from ta_data.stages_doc import progress_bar

TOKEN_BINS = (100, 200, 300, 400, 500, 600, 700, 800, 1000)
"""Upper edges of the chunk-length histogram in card.json (tokens); longer ones count as ">1000"."""


def token_bin(n: int) -> str:
    for edge in TOKEN_BINS:
        if n <= edge:
            return f"<={edge}"
    return f">{TOKEN_BINS[-1]}"


def chunks_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.output) / "chunks.jsonl"


def run_dedup(cfg: PipelineConfig) -> StageStats:
    """Exact + MinHash near-duplicate removal over stages/pii.jsonl; the first of each cluster stays."""
    stats = StageStats("dedup")
    src = stage_file(cfg.output, "pii")
    params = SketchParams.for_threshold(cfg.dedup.threshold)
    parts, n = [], 0
    records = iter_jsonl(src)
    bar = progress_bar(None, "dedup", cfg.progress)
    while batch := list(islice(records, cfg.dedup.batch_docs)):
        parts.append(sketch([record_text(r) for r in batch], ids=range(n, n + len(batch)), params=params))
        n += len(batch)
        bar.update(len(batch))
    bar.close()
    if n == 0:
        return _write_dedup(cfg, stats, set(), {}, None)
    merged = merge_sketches(parts)
    parts.clear()  # the shards' copies: 152 bytes per document
    candidates = candidate_pairs(merged)  # peak: the one-process sort of docs x bands keys (~0.8 KB/doc)
    involved = set(candidates.ravel().tolist())
    texts = {i: record_text(r) for i, r in enumerate(iter_jsonl(src)) if i in involved}
    result = cluster(merged, confirm_pairs(candidates, texts, params.threshold), len(candidates))
    reps = exact_representatives(merged)  # ids are positions 0..n-1, so reps[i] is record i's
    stats.extra["candidate_pairs"] = result.n_candidates
    return _write_dedup(cfg, stats, set(result.removed), result.removed, reps)


def _write_dedup(cfg: PipelineConfig, stats: StageStats, removed: set[int], kept_as: dict[int, int], reps) -> StageStats:
    with AtomicWriter(stage_file(cfg.output, "dedup")) as out, AtomicWriter(rejects_file(cfg.output, "dedup")) as rej:
        for i, rec in enumerate(iter_jsonl(stage_file(cfg.output, "pii"))):
            stats.count_in(rec["source"])
            if i not in removed:
                stats.count_out(rec["source"], rec.get("lang"))
                out.write(rec)
                continue
            kind = "exact" if reps[i] != i else "near"
            stats.extra[f"duplicates:{kind}"] += 1
            stats.rejects_by_reason[f"dedup: {kind} duplicate"] += 1
            line = rec.get("line") if rec["type"] == "qa" else (rec.get("meta") or {}).get("line")
            keeper = kept_as[i]
            rej.write(Reject(rec["source"], line, f"dedup: {kind} duplicate of record {keeper}", rec).to_json())
    return stats


def run_chunk(cfg: PipelineConfig) -> StageStats:
    """Documents of stages/dedup.jsonl -> DIR/chunks.jsonl (QA pairs go straight to synth)."""
    stats = StageStats("chunk")
    c = cfg.chunk
    config = ChunkConfig(c.min_tokens, c.max_tokens, c.overlap_tokens, c.tokenizer)

    def docs() -> Iterator:
        for rec in iter_jsonl(stage_file(cfg.output, "dedup")):
            if rec["type"] == "doc":
                stats.count_in(rec["source"])
                yield to_document(rec)

    with AtomicWriter(chunks_path(cfg)) as out:
        bar = progress_bar(None, "chunk", cfg.progress)
        for chunk in chunk_documents(docs(), config):
            stats.count_out(chunk.source, chunk.lang)
            stats.extra[f"tokens:{token_bin(chunk.n_tokens)}"] += 1
            stats.extra["tokens:total"] += chunk.n_tokens
            out.write(chunk.to_json())
            bar.update()
        bar.close()
    return stats


def iter_chunks(cfg: PipelineConfig) -> Iterator[Chunk]:
    for rec in iter_jsonl(chunks_path(cfg)):
        yield Chunk.from_dict(rec)


def _qa_pairs(cfg: PipelineConfig, off_course: bool) -> Iterator[Any]:
    for rec in iter_jsonl(stage_file(cfg.output, "dedup")):
        if rec["type"] == "qa" and bool(rec.get("off_course")) == off_course:
            yield to_qapair(rec)


def _synth_records(cfg: PipelineConfig, rejects: list[Reject]) -> Iterator[dict]:
    s = cfg.synth
    if s.backend == "teacher":
        from ta_data.teacher import TeacherConfig, teacher_synthesize

        teacher = TeacherConfig(base_url=s.teacher.base_url, model=s.teacher.model, **dict(s.teacher.extra))
        yield from teacher_synthesize(iter_chunks(cfg), teacher, kinds=tuple(s.kinds), rejects=rejects)
    else:
        from ta_data.synth import SynthConfig, synthesize

        yield from synthesize(iter_chunks(cfg), SynthConfig(kinds=tuple(s.kinds), per_chunk=s.per_chunk, seed=s.seed))
    from ta_data.synth import qa_records

    yield from qa_records(_qa_pairs(cfg, off_course=False))


def run_synth(cfg: PipelineConfig) -> StageStats:
    """Instruction records from every chunk (template or teacher back-end) and every course QA pair."""
    stats = StageStats("synth")
    rejects: list[Reject] = []
    with AtomicWriter(stage_file(cfg.output, "synth")) as out, AtomicWriter(rejects_file(cfg.output, "synth")) as rej:
        bar = progress_bar(None, "synth", cfg.progress)
        for record in _synth_records(cfg, rejects):
            meta = record.get("meta") or {}
            stats.count_out(str(meta.get("source")), meta.get("lang"))
            stats.extra[f"kind:{meta.get('kind')}"] += 1
            out.write(record)
            bar.update()
            for r in rejects:
                stats.rejects_by_reason[f"synth: {reason_key(r.reason)}"] += 1
                rej.write(r.to_json())
            rejects.clear()
        bar.close()
    stats.n_in = sum(1 for _ in iter_jsonl(chunks_path(cfg)))
    return stats


def run_refusals(cfg: PipelineConfig) -> StageStats:
    """Refusal records: off-course questions and chunk-A questions asked with chunk B as context."""
    from ta_data.refusals import make_refusals

    stats = StageStats("refusals")
    chunks = list(iter_chunks(cfg))
    off_course = [pair.question for pair in _qa_pairs(cfg, off_course=True)]
    n_course = sum(1 for _ in iter_jsonl(stage_file(cfg.output, "synth")))
    stats.n_in = n_course
    records = make_refusals(chunks, off_course, share=cfg.refusals.share, seed=cfg.refusals.seed, n_course=n_course) \
        if chunks else []  # no chunk to use as context: no refusals
    with AtomicWriter(stage_file(cfg.output, "refusals")) as out:
        for record in records:
            meta = record.get("meta") or {}
            stats.count_out(str(meta.get("source")), meta.get("lang"))
            stats.extra[f"kind:{meta.get('kind')}"] += 1
            out.write(record)
    return stats
