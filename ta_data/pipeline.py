"""The ta_data pipeline: read -> clean -> quality -> pii -> dedup -> chunk -> synth -> refusals -> mix.

`run(cfg, config_dict)` runs every stage (or `cfg.stage` alone) into `cfg.output`; each stage reads
the previous stage's file under DIR/stages/ and writes its own, its rejects and its counts, so any
stage can be rerun alone. After a full run the stages that still hold unscrubbed text (read, clean,
quality) are deleted unless `keep_raw_stages=true`: no planted PII survives in DIR.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ta_data.card import summary, write_card, write_rejects
from ta_data.config import STAGES, PipelineConfig
from ta_data.mix_stage import run_mix
from ta_data.stage_io import StageStats
from ta_data.stages_corpus import run_chunk, run_dedup, run_refusals, run_synth
from ta_data.stages_doc import raw_stage_files, run_per_record, run_read

RUNNERS: dict[str, Callable[[PipelineConfig], StageStats]] = {
    "read": run_read,
    "clean": lambda cfg: run_per_record(cfg, "clean"),
    "quality": lambda cfg: run_per_record(cfg, "quality"),
    "pii": lambda cfg: run_per_record(cfg, "pii"),
    "dedup": run_dedup,
    "chunk": run_chunk,
    "synth": run_synth,
    "refusals": run_refusals,
    "mix": run_mix,
}
assert tuple(RUNNERS) == STAGES


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, MB (Linux ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run(cfg: PipelineConfig, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Run the pipeline (or one stage), write card.json and rejects.jsonl, print the summary.

    Returns the card. Timings (seconds per stage, peak RSS) go to DIR/timing.json, which is the
    only output that changes between identical reruns.
    """
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    stages = [cfg.stage] if cfg.stage else list(STAGES)
    timing: dict[str, float] = {}
    peak_after: dict[str, float] = {}  # peak RSS so far after each stage: where the peak was reached
    for stage in stages:
        t0 = time.perf_counter()
        RUNNERS[stage](cfg).write(out)
        timing[stage] = round(time.perf_counter() - t0, 3)
        peak_after[stage] = round(peak_rss_mb(), 1)
        if stage == "pii" and not cfg.stage and not cfg.keep_raw_stages:
            for path in raw_stage_files(out):
                path.unlink(missing_ok=True)
    write_rejects(out)
    card = write_card(out, config_dict)
    (out / "timing.json").write_text(
        json.dumps({"seconds": timing, "peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_mb_after": peak_after},
                   sort_keys=True) + "\n", encoding="utf-8"
    )
    print(summary(card))
    print(f"outputs in {out}: chunks.jsonl sft.jsonl val.jsonl evalset.jsonl rejects.jsonl card.json", file=sys.stderr)
    return card
