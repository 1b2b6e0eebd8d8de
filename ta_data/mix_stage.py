"""Stage 9 runner: writes DIR/sft.jsonl (train), DIR/val.jsonl, DIR/evalset.jsonl (see ta_data.mix)."""
from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from pathlib import Path

from ta_data.config import PipelineConfig, ReplaySource
from ta_data.mix import below, eval_item, in_format, record_hash, record_lang, replay_indices, replay_target
from ta_data.mix import EVAL_KINDS, select_course
from ta_data.pii import load_roster
from ta_data.readers import read_open_dataset
from ta_data.records import Reject
from ta_data.stage_io import AtomicWriter, StageStats, iter_jsonl, reason_key, rejects_file, stage_file
from ta_data.stages_doc import progress_bar, scrub_value, scrubbed_reject

OUTPUTS = ("sft.jsonl", "val.jsonl", "evalset.jsonl")


def _course(cfg: PipelineConfig) -> Iterator[dict]:
    return chain(iter_jsonl(stage_file(cfg.output, "synth")), iter_jsonl(stage_file(cfg.output, "refusals")))


def _replay(src: ReplaySource, rejects: list[Reject], roster) -> Iterator[dict]:
    """An open dataset's records with PII scrubbed (open data is not trusted to be clean either)."""
    path = Path(src.path)
    if not path.is_file():
        raise FileNotFoundError(f"data.mix.replay path {src.path!r} does not exist")
    for record in read_open_dataset(path, src.format, rejects):
        yield scrub_value(record, roster)


def run_mix(cfg: PipelineConfig) -> StageStats:
    mix = cfg.mix
    stats = StageStats("mix")
    roster = load_roster(cfg.pii.roster) if cfg.pii.roster else None
    kept, held, drops = select_course(lambda: _course(cfg), mix)
    stats.extra["dropped:ratio"], stats.extra["dropped:cap"] = drops["ratio"], drops["cap"]
    n_course = len(kept)
    rejects: list[Reject] = []
    plans = []  # (source, indices to keep or None for all)
    for src in mix.replay:
        target = replay_target(src.ratio, src.cap, n_course)
        plans.append((src, replay_indices(lambda s=src: _replay(s, [], roster), target, mix.seed)))
    out_dir = Path(cfg.output)
    eval_items: dict[str, list[dict]] = {k: [] for k in EVAL_KINDS}
    with AtomicWriter(out_dir / "sft.jsonl") as train, AtomicWriter(out_dir / "val.jsonl") as val:
        bar = progress_bar(None, "mix", cfg.progress)

        def emit(rec: dict, origin: str) -> None:
            meta = rec.get("meta") or {}
            side = val if below(record_hash(rec, "split", mix.seed), mix.val_fraction) else train
            side.write(in_format(rec, mix.format))
            stats.count_out(str(meta.get("source")), record_lang(rec))
            stats.extra[f"{'val' if side is val else 'train'}"] += 1
            stats.extra[f"kind:{meta.get('kind')}"] += 1
            stats.extra[f"origin:{origin}"] += 1
            bar.update()

        for i, rec in enumerate(_course(cfg)):
            stats.count_in(str((rec.get("meta") or {}).get("source")))
            if i in held:
                eval_items[held[i]].append(eval_item(rec, held[i], mix.seed, mix.system_prompt))
            elif i in kept:
                emit(rec, "course")
        for src, keep in plans:
            for j, rec in enumerate(_replay(src, rejects, roster)):
                stats.count_in(str((rec.get("meta") or {}).get("source")))
                if keep is None or j in keep:
                    emit(rec, f"replay:{Path(src.path).name}")
        bar.close()
    with AtomicWriter(out_dir / "evalset.jsonl") as ev:
        for kind in EVAL_KINDS:
            stats.extra[f"evalset:{kind}"] = len(eval_items[kind])
            for item in eval_items[kind]:
                ev.write(item)
    with AtomicWriter(rejects_file(cfg.output, "mix")) as rej:
        for r in rejects:
            stats.rejects_by_reason[f"mix: {reason_key(r.reason)}"] += 1
            rej.write(scrubbed_reject(r, roster))
    return stats
